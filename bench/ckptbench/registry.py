"""Finds the systems and workloads: every module in systems/ and workloads/ (not starting with "_") is
imported, and each class it defines that derives from `System` or `Workload` and has a `name` is registered
under that name, ordered by its `order` (then name). So adding a system or a workload is adding a module."""
import importlib
import pkgutil

from . import systems as _systems
from . import workloads as _workloads


def _discover(package, base):
    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, base) and obj.__module__ == module.__name__
                    and obj.name):
                if obj.name in found:
                    raise RuntimeError(f"ckptbench: two {base.__name__} classes named {obj.name!r}: "
                                       f"{found[obj.name].__module__} and {module.__name__}")
                found[obj.name] = obj
    return dict(sorted(found.items(), key=lambda kv: (kv[1].order, kv[0])))


def systems():
    """{name: System subclass}, in default order."""
    return _discover(_systems, _systems.System)


def workloads():
    """{name: Workload subclass}, in default order."""
    return _discover(_workloads, _workloads.Workload)
