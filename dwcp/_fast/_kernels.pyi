# The type of ``dwcp._backend.impl``: every kernel of dwcp/_fast, as the .pyi stubs beside this file
# declare them (the _ref twins have the same names and signatures), so mypy checks each call into a
# kernel.  Only a stub: at run time ``impl`` is the namespace ``dwcp._backend.load`` builds.
from .engine import *  # noqa: F403
from .framing import *  # noqa: F403
from .ring import *  # noqa: F403
from .stats import *  # noqa: F403
from .uring import *  # noqa: F403
from .xorzrle import *  # noqa: F403

name: str
