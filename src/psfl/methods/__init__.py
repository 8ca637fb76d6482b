"""Federated methods behind one interface (:class:`FederatedMethod`): client update,
server aggregation and the codecs that put both on the wire. Runners look a method up
by name in :data:`METHODS` and only orchestrate. The layer above the core: it may import
any core package, never runners, experiments or the CLI; plugins register through the
entry point group ``psfl.methods``."""
from psfl.methods.base import METHODS, ClientResult, FederatedEnv, FederatedMethod, Upload, build_env

# Importing the modules registers the methods.
from psfl.methods import psfl as _psfl  # noqa: F401,E402
from psfl.methods import single as _single  # noqa: F401,E402
from psfl.methods import contenders as _contenders  # noqa: F401,E402
from psfl.methods import fedprox as _fedprox  # noqa: F401,E402
from psfl.methods import fedkd as _fedkd  # noqa: F401,E402

from psfl.methods.validate import check_run_config, method_options, options_for  # noqa: E402

__all__ = ["METHODS", "ClientResult", "FederatedEnv", "FederatedMethod", "Upload", "build_env", "check_run_config",
           "method_options", "options_for"]

# Methods of other installed packages (entry point group "psfl.methods"), loaded once.
from psfl.methods import plugins as _plugins  # noqa: E402

if not _plugins.loaded():
    _plugins.load_method_plugins()
