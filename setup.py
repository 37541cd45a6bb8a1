"""setuptools reads everything from pyproject.toml; this file only adds m3e-chroma.pth to the installed tree.

The .pth file must sit at the top of site-packages (package data cannot go there), in a wheel and in an
editable install alike; its one line lets Chroma find m3e's embedding function by name in a process that
never imported m3e (m3e/integrations/chroma_autoload.py says why and how).
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = Path(__file__).parent / "src" / "m3e" / "integrations" / "m3e-chroma.pth"


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        targets = [Path(self.build_lib)]
        if getattr(self, "editable_mode", False):  # an editable wheel takes its files from the install root
            targets.append(Path(self.get_finalized_command("install").install_lib))
        for target in targets:
            target.mkdir(parents=True, exist_ok=True)
            self.copy_file(str(PTH), str(target / PTH.name))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH.name)]


setup(cmdclass={"build_py": BuildPyWithPth})
