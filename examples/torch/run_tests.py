# SPDX-License-Identifier: Apache-2.0
"""Runs test_fulgur_torch.py with pytest, or, where pytest is not installed (a GPU machine with
PyTorch but no network), with a small stand-in covering what the test file uses: importorskip,
module-level skip, fixtures by name, stacked parametrize, raises(match=...).

    python run_tests.py [-k SUBSTRING]      exit code: 0 all passed or skipped, 1 a failure

bench/gpu_check.sh runs it after building the extension (FULGUR_TORCH_LIBRARY names the library).
"""
import importlib.util
import inspect
import itertools
import os
import re
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
TEST_FILE = os.path.join(HERE, "test_fulgur_torch.py")


class Skipped(Exception):
    pass


class _Raises:
    def __init__(self, exc, match=None):
        self.exc, self.match = exc, match

    def __enter__(self):
        return self

    def __exit__(self, typ, value, tb):
        if typ is None:
            raise AssertionError(f"DID NOT RAISE {self.exc.__name__}")
        if not issubclass(typ, self.exc):
            return False
        if self.match is not None and not re.search(self.match, str(value)):
            raise AssertionError(f"{typ.__name__} raised, but {self.match!r} not in: {value}")
        return True


class _Mark:
    @staticmethod
    def parametrize(names, values):
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)

        def deco(fn):
            fn.__dict__.setdefault("_params", []).append((names, list(values)))
            return fn

        return deco


class _PytestStandIn:
    """The subset of the pytest module test_fulgur_torch.py uses."""

    mark = _Mark()
    _fixtures = {}

    @staticmethod
    def skip(reason="", allow_module_level=False):
        raise Skipped(reason)

    @staticmethod
    def importorskip(name):
        try:
            return __import__(name)
        except ImportError as e:
            raise Skipped(f"could not import {name!r}: {e}")

    @classmethod
    def fixture(cls, fn):
        cls._fixtures[fn.__name__] = fn
        return fn

    @staticmethod
    def raises(exc, match=None):
        return _Raises(exc, match)


class _Request:
    def __init__(self, name):
        self.node = type("Node", (), {"name": name})()


def _cases(fn):
    """(id, kwargs) per combination of the stacked parametrize decorators."""
    groups = list(reversed(fn.__dict__.get("_params", [])))  # the innermost decorator first, as pytest
    if not groups:
        return [("", {})]
    out = []
    for combo in itertools.product(*[vals for _, vals in groups]):
        kwargs, ids = {}, []
        for (names, _), val in zip(groups, combo):
            vals = val if len(names) > 1 else (val,)
            kwargs.update(zip(names, vals))
            ids.append("-".join(str(v).replace("torch.", "") for v in vals))
        out.append(("[" + "-".join(ids) + "]", kwargs))
    return out


def run_stand_in(select):
    shim = _PytestStandIn()
    sys.modules["pytest"] = shim  # the test file's `import pytest` gets the stand-in
    spec = importlib.util.spec_from_file_location("test_fulgur_torch", TEST_FILE)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Skipped as e:
        print(f"SKIPPED (whole module): {e}")
        print("0 passed, 0 failed, 1 skipped")
        return 0
    except Exception:  # e.g. FULGUR_TORCH_REQUIRE=1 and the extension does not load
        traceback.print_exc()
        print("0 passed, 1 failed (the test module did not import), 0 skipped")
        return 1
    passed = failed = skipped = 0
    for name, fn in inspect.getmembers(module, inspect.isfunction):
        if not name.startswith("test_") or fn.__module__ != module.__name__:
            continue
        for case_id, kwargs in _cases(fn):
            full = name + case_id
            if select and select not in full:
                continue
            args = dict(kwargs)
            for p in inspect.signature(fn).parameters:
                if p not in args and p in shim._fixtures:
                    fx = shim._fixtures[p]
                    args[p] = fx(_Request(full)) if "request" in inspect.signature(fx).parameters else fx()
            t0 = time.time()
            try:
                fn(**args)
                passed += 1
                print(f"PASSED {full} ({time.time() - t0:.2f} s)")
            except Skipped as e:
                skipped += 1
                print(f"SKIPPED {full}: {e}")
            except Exception:
                failed += 1
                print(f"FAILED {full}")
                traceback.print_exc()
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


def main():
    argv = sys.argv[1:]
    select = argv[argv.index("-k") + 1] if "-k" in argv else ""
    sys.path.insert(0, HERE)  # the fulgur_torch package next to this file
    try:
        import pytest
    except ImportError:
        pytest = None
    if pytest is None:
        print("pytest is not installed: running the tests with run_tests.py's stand-in")
        return run_stand_in(select)
    args = ["-q", "-rs", "-p", "no:cacheprovider", TEST_FILE]
    if select:
        args += ["-k", select]
    return pytest.main(args)


if __name__ == "__main__":
    sys.exit(main())
