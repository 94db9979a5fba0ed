"""The tiny release-layout checkpoint fixtures of the conversion tests, for model judges."""

from tests.convert.conftest import convert_root, imported, release  # noqa: F401
from tests.convert.test_generate_cli import spm  # noqa: F401
from tests.slurm.conftest import slurm  # noqa: F401,E402  (a local SLURM cluster)
