from m3e.cli import main

raise SystemExit(main())
