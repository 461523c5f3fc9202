"""Checking, without running them, the calls a test module makes into this repository's code.

A `cuda`-marked test is skipped on a CPU, so a call in it that no longer fits the code it calls
(a method that lost an argument, a renamed keyword, an attribute that moved) fails on the first
GPU and nowhere before. `check_module` reads the module's AST, follows the values it gets from
project code by their annotations (a fixture's return annotation, a function's or method's, a
class's fields and the `self.x = ...` assignments in its source), and binds each call's shape (how
many positional arguments, which keywords) with `inspect.Signature.bind`, as Python would at the
call. Reading an attribute that a project class does not have is a problem too.

What it cannot know it leaves alone: values from third-party code, unannotated results, calls with
`*args` or `**kwargs` (their keywords are still checked). A project fixture without a return
annotation whose value the module calls or reads attributes of is reported, so that the check
does not go quiet when a fixture changes.
"""
from __future__ import annotations

import ast
import builtins
import collections.abc
import importlib
import importlib.util
import inspect
import sys
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


# --- what a name may hold ------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Known:
    """A value the imported module holds: a module, class, function or constant (compared by
    identity: the value may be an array)."""
    value: object

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Known) and other.value is self.value

    def __hash__(self) -> int:
        return id(self.value)


@dataclass(frozen=True)
class Instance:
    cls: type


@dataclass(frozen=True)
class Factory:
    """typing.Callable[[A, B], R] (n_args 2) or Callable[..., R] (n_args None)."""
    n_args: int | None
    returns: object


@dataclass(frozen=True)
class Items:
    """A sequence: its elements by position (tuple[A, B]) or all alike (list[T])."""
    each: object
    fixed: tuple | None = None


@dataclass(frozen=True)
class Unannotated:
    """A project fixture without a return annotation."""
    fixture: str


@dataclass(frozen=True)
class Problem:
    line: int
    source: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.source}: {self.message}"


@dataclass(frozen=True)
class Checked:
    """A call bound to the signature of `callee` (its qualified name)."""
    line: int
    position: tuple[int, int, int, int]  # the call's start and end (line, column)
    callee: str
    any_keyword: bool  # the callee takes **kwargs


@dataclass
class Report:
    path: Path
    checked: list[Checked] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def is_project(obj: object, also: Path | None = None) -> bool:
    """Whether obj is defined in this repository (or in the file `also`: the module checked)."""
    try:
        source = inspect.getsourcefile(inspect.unwrap(obj))
    except (TypeError, ValueError):
        return False
    if source is None or not Path(source).is_absolute():  # "<frozen ...>", "<string>"
        return False
    source = Path(source).resolve()
    return source == also or source.is_relative_to(ROOT) and "site-packages" not in str(source)


def position(node: ast.AST) -> tuple[int, int, int, int]:
    return node.lineno, node.col_offset, node.end_lineno, node.end_col_offset


def qualname(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


# --- annotations -----------------------------------------------------------------------------------

class _Imports(dict):
    """The names a module imports anywhere (inside functions and `if TYPE_CHECKING:` too), imported
    on first use: string annotations may name what the module only imports lazily."""

    def __init__(self, module: types.ModuleType):
        super().__init__()
        self.module = module
        self._sources: dict[str, tuple[str, str | None]] | None = None

    @property
    def sources(self) -> dict[str, tuple[str, str | None]]:
        """name -> (module, attribute or None), read from the source on first use."""
        if self._sources is None:
            self._sources = _imported_names(self.module)
        return self._sources

    def __missing__(self, name: str):  # eval looks here before the globals and builtins
        if name in vars(self.module):
            return vars(self.module)[name]
        if hasattr(builtins, name):
            return getattr(builtins, name)
        if name not in self.sources:
            raise KeyError(name)
        module, attr = self.sources[name]
        value = importlib.import_module(module)
        return getattr(value, attr) if attr else value


def _imported_names(module: types.ModuleType) -> dict[str, tuple[str, str | None]]:
    names: dict[str, tuple[str, str | None]] = {}
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError):
        return names
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                names[a.asname or a.name] = (node.module, a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = (a.name if a.asname else a.name.split(".")[0], None)
    return names


def evaluate_annotation(annotation: object, module_name: str) -> object:
    """An annotation (a string under `from __future__ import annotations`) -> a Value."""
    if isinstance(annotation, str):
        module = sys.modules.get(module_name)
        if module is None:
            return None
        try:
            annotation = eval(annotation, dict(vars(module)), _Imports(module))  # noqa: S307 (the repository's own annotations)
        except Exception:
            return None
    return from_type(annotation)


def from_type(t: object) -> object:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return from_type(rest[0]) if len(rest) == 1 else None
    if origin is collections.abc.Callable and args:
        return Factory(None if args[0] is Ellipsis else len(args[0]), from_type(args[-1]))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return Items(from_type(args[0]))
        return Items(None, tuple(from_type(a) for a in args))
    if origin in (list, collections.abc.Sequence, collections.abc.Iterable, collections.abc.Iterator,
                  collections.abc.Generator) and args:
        return Items(from_type(args[0]))
    if isinstance(t, type) and origin is None and t is not typing.Any:
        return Instance(t)
    return None


def return_value(fn: object) -> object:
    fn = inspect.unwrap(getattr(fn, "__func__", fn))
    annotation = getattr(fn, "__annotations__", {}).get("return")
    return None if annotation is None else evaluate_annotation(annotation, fn.__module__)


# --- project classes: their attributes -------------------------------------------------------------

def _mro(cls: type) -> list[type]:
    return [c for c in cls.__mro__ if c is not object]


class ClassReader:
    """What the instances of project classes have, read from their source (parsed once per class)."""

    def __init__(self):
        self._assignments: dict[type, dict[str, list[ast.expr | None]]] = {}
        self._values: dict[tuple[type, str], tuple[bool, object, object]] = {}

    def assignments(self, cls: type) -> dict[str, list[ast.expr | None]]:
        """attribute -> the expressions assigned to self.<attribute> in the class's own source (None
        where one is not a plain assignment: unpacking, augmented, registered by name)."""
        if cls not in self._assignments:
            self._assignments[cls] = _self_assignments(cls)
        return self._assignments[cls]

    def attribute(self, cls: type, name: str, guard: frozenset = frozenset()) -> tuple[bool, object, object]:
        """(whether `name` exists on instances of cls, as far as can be told; its Value; the static
        attribute if the class defines it: function, staticmethod, classmethod or property)."""
        key = (cls, name)
        if guard or key not in self._values:
            found = self._attribute(cls, name, guard)
            if guard:
                return found
            self._values[key] = found
        return self._values[key]

    def _attribute(self, cls: type, name: str, guard: frozenset) -> tuple[bool, object, object]:
        for c in _mro(cls):
            if name in vars(c):
                static = vars(c)[name]
                if isinstance(static, property) and static.fget is not None:
                    return True, return_value(static.fget), static
                return True, None, static
        for c in _mro(cls):
            annotation = inspect.get_annotations(c).get(name)
            if annotation is not None:
                return True, evaluate_annotation(annotation, c.__module__), None
        for c in _mro(cls):
            assigned = self.assignments(c).get(name) if is_project(c) else None
            if assigned:
                key = (c, name)
                values = [None] if key in guard or None in assigned else \
                    [self._evaluate(c, expr, guard | {key}) for expr in assigned]
                return True, values[0] if all(v == values[0] for v in values) else None, None
        # a base from elsewhere may set attributes this cannot see (nn.Module's are annotated)
        opaque = any(not is_project(c) and c is not torch.nn.Module and
                     any(k in vars(c) for k in ("__init__", "__getattr__", "__slots__")) for c in _mro(cls))
        opaque = opaque or any("__getattr__" in vars(c) for c in _mro(cls) if c is not torch.nn.Module)
        # an annotation often names the base class: what one of its subclasses has may be there
        in_subclass = any(self.attribute(sub, name, guard)[0] for sub in cls.__subclasses__() if is_project(sub))
        return opaque or in_subclass or not is_project(cls), None, None

    def _evaluate(self, cls: type, expr: ast.expr, guard: frozenset) -> object:
        """The Value of an expression in cls's source assigned to a self attribute (no problems
        recorded: only test modules are checked)."""
        module = sys.modules.get(cls.__module__)
        if module is None:
            return None
        scope = Scope(_Checker(Report(Path(module.__file__)), module, [], self, quiet=True), None, guard)
        scope.names["self"] = Instance(cls)
        return scope.value(expr)


def _self_assignments(cls: type) -> dict[str, list[ast.expr | None]]:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    found: dict[str, list[ast.expr | None]] = {}

    def self_attr(node: ast.AST) -> str | None:
        ok = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
        return node.attr if ok else None

    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if self_attr(target):
                    found.setdefault(self_attr(target), []).append(node.value)
                elif isinstance(target, ast.Tuple):
                    for t in target.elts:
                        if self_attr(t):
                            found.setdefault(self_attr(t), []).append(None)
        elif isinstance(node, ast.AugAssign) and self_attr(node.target):
            found.setdefault(self_attr(node.target), []).append(None)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args and \
                node.func.attr in ("register_buffer", "register_parameter", "add_module") and \
                isinstance(node.args[0], ast.Constant):
            found.setdefault(node.args[0].value, []).append(None)
    return found


# --- the walk ------------------------------------------------------------------------------------

class _Checker:
    def __init__(self, report: Report, module: types.ModuleType, fixture_modules: list[types.ModuleType],
                 classes: ClassReader, quiet: bool = False, source: str = ""):
        self.report, self.module, self.classes, self.quiet, self.source = report, module, classes, quiet, source
        self.fixture_modules = [module, *fixture_modules]
        self.unannotated_reported: set[str] = set()
        self.own = Path(module.__file__).resolve()

    def project(self, obj: object) -> bool:
        return is_project(obj, self.own)

    def problem(self, node: ast.AST, message: str) -> None:
        if not self.quiet:
            text = ast.get_source_segment(self.source, node) or ast.dump(node)[:80]
            self.report.problems.append(Problem(node.lineno, " ".join(text.split())[:120], message))

    def fixture(self, name: str) -> object:
        for module in self.fixture_modules:
            obj = vars(module).get(name)
            fn = getattr(obj, "__wrapped__", None)  # pytest.fixture keeps the function there
            if fn is None or not callable(fn):
                continue
            annotation = fn.__annotations__.get("return")
            if annotation is None:
                return Unannotated(name) if self.project(fn) else None
            value = evaluate_annotation(annotation, fn.__module__)
            if inspect.isgeneratorfunction(fn) and isinstance(value, Items):
                return value.each
            return value
        return None


def _assigned_names(body: list[ast.stmt]) -> set[str]:
    """Names a function body binds (its locals), nested functions and classes excluded."""
    names: set[str] = set()
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.split(".")[0])
        stack.extend(ast.iter_child_nodes(node))
    return names


class Scope:
    def __init__(self, checker: _Checker, parent: Scope | None, guard: frozenset = frozenset()):
        self.checker, self.parent, self.guard = checker, parent, guard
        self.names: dict[str, object] = {}
        self.tests = False  # a Test* class body: its test methods take fixtures

    def lookup(self, name: str) -> object:
        scope = self
        while scope is not None:
            if name in scope.names:
                return scope.names[name]
            scope = scope.parent
        module = self.checker.module
        if name in vars(module):
            return Known(vars(module)[name])
        return Known(getattr(builtins, name)) if hasattr(builtins, name) else None

    # statements
    def run(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            self.statement(stmt)

    def statement(self, node: ast.stmt) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            self.function(node)
        elif isinstance(node, ast.ClassDef):
            for d in node.decorator_list + node.bases:
                self.value(d)
            inner = Scope(self.checker, self)
            inner.tests = node.name.startswith("Test")
            inner.run(node.body)
        elif isinstance(node, ast.Assign):
            value = self.value(node.value)
            for target in node.targets:
                self.bind(target, value)
        elif isinstance(node, ast.AnnAssign):
            value = self.value(node.value) if node.value else None
            self.bind(node.target, value)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            items = self.value(node.iter)
            self.bind(node.target, items.each if isinstance(items, Items) else None)
            self.run(node.body + node.orelse)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            self.imports(node)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                self.value(item.context_expr)
                if item.optional_vars is not None:
                    self.bind(item.optional_vars, None)
            self.run(node.body)
        else:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    self.statement(child)
                elif isinstance(child, ast.expr):
                    self.value(child)
                elif isinstance(child, ast.excepthandler):
                    if child.type is not None:
                        self.value(child.type)
                    if child.name:
                        self.names[child.name] = None
                    self.run(child.body)

    def imports(self, node: ast.Import | ast.ImportFrom) -> None:
        """An import inside a function runs only with it: import it here, so that a stale one fails."""
        if self.parent is None:
            return  # the module's own imports ran when it was imported
        if isinstance(node, ast.Import):
            for a in node.names:  # `import a.b` binds a; `import a.b as c` binds a.b
                module = self._import(node, a.name) and importlib.import_module(a.name if a.asname else
                                                                                 a.name.split(".")[0])
                self.names[a.asname or a.name.split(".")[0]] = Known(module) if module else None
            return
        if node.level:
            return
        module = self._import(node, node.module)
        for a in node.names:
            value = getattr(module, a.name, None) if module else None
            if module and value is None and hasattr(module, "__path__"):  # a package's submodule
                value = importlib.util.find_spec(f"{node.module}.{a.name}") and \
                    self._import(node, f"{node.module}.{a.name}")
            if module and value is None:
                self.checker.problem(node, f"ImportError: cannot import name {a.name!r} from {node.module!r}")
            self.names[a.asname or a.name] = Known(value) if value is not None else None

    def _import(self, node: ast.stmt, name: str) -> types.ModuleType | None:
        try:
            return importlib.import_module(name)
        except Exception as e:  # what running the function would raise
            self.checker.problem(node, f"{type(e).__name__}: {e}")
            return None

    def bind(self, target: ast.expr, value: object) -> None:
        if isinstance(target, ast.Name):
            if self.parent is None and target.id in vars(self.checker.module):
                return  # the module's own value is better known than this walk's
            self.names[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            fixed = value.fixed if isinstance(value, Items) and value.fixed is not None and \
                len(value.fixed) == len(target.elts) else None
            for i, t in enumerate(target.elts):
                each = value.each if isinstance(value, Items) else None
                self.bind(t, fixed[i] if fixed else each)
        elif isinstance(target, ast.Starred):
            self.bind(target.value, None)
        else:
            self.value(target)  # an attribute or subscript target: its parts may call project code

    def function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for d in node.decorator_list:
            self.value(d)
        for default in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
            self.value(default)
        is_fixture = any("fixture" in ast.unparse(d) for d in node.decorator_list)
        takes_fixtures = is_fixture or (node.name.startswith("test") and (self.parent is None or self.tests))
        inner = Scope(self.checker, self)
        for name in _assigned_names(node.body):
            inner.names[name] = None  # a local: never the module's global of the same name
        params = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
        for i, a in enumerate(params):
            if a.annotation is not None:
                inner.names[a.arg] = evaluate_annotation(ast.unparse(a.annotation), self.checker.module.__name__)
            elif takes_fixtures and not (i == 0 and a.arg in ("self", "cls")):
                inner.names[a.arg] = self.checker.fixture(a.arg)
            else:
                inner.names[a.arg] = None
        for a in (node.args.vararg, node.args.kwarg):
            if a is not None:
                inner.names[a.arg] = None
        if self.parent is not None:
            self.names[node.name] = None  # a nested function: not checked as a callee
        inner.run(node.body)

    # expressions
    def value(self, node: ast.expr) -> object:
        if isinstance(node, ast.Name):
            return self.lookup(node.id)
        if isinstance(node, ast.Constant):
            return Known(node.value)
        if isinstance(node, ast.Attribute):
            return self.attribute(node, self.value(node.value))
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Subscript):
            return self.subscript(node)
        if isinstance(node, ast.IfExp):
            self.value(node.test)
            a, b = self.value(node.body), self.value(node.orelse)
            none = Known(None)
            return a if b == none else b if a == none else a if a == b else None
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            inner = Scope(self.checker, self, self.guard)
            for gen in node.generators:
                items = inner.value(gen.iter)
                inner.bind(gen.target, items.each if isinstance(items, Items) else None)
                for cond in gen.ifs:
                    inner.value(cond)
            for part in (node.key, node.value) if isinstance(node, ast.DictComp) else (node.elt,):
                inner.value(part)
            return None
        if isinstance(node, ast.Lambda):
            inner = Scope(self.checker, self, self.guard)
            for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
                inner.names[a.arg] = None
            inner.value(node.body)
            return None
        if isinstance(node, ast.NamedExpr):
            value = self.value(node.value)
            self.bind(node.target, value)
            return value
        if isinstance(node, ast.Tuple):
            return Items(None, tuple(self.value(e) for e in node.elts))
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.value(child)
            elif isinstance(child, ast.keyword):
                self.value(child.value)
        return None

    def subscript(self, node: ast.Subscript) -> object:
        base, index = self.value(node.value), self.value(node.slice)
        if isinstance(base, Items):
            if base.fixed is not None and isinstance(index, Known) and isinstance(index.value, int):
                return base.fixed[index.value] if -len(base.fixed) <= index.value < len(base.fixed) else None
            return base.each if not isinstance(node.slice, ast.Slice) else base
        return None

    def attribute(self, node: ast.Attribute, base: object) -> object:
        name = node.attr
        if isinstance(base, Unannotated):
            self.unannotated(node, base)
            return None
        if isinstance(base, Known):
            obj = base.value
            if hasattr(obj, name):
                return Known(getattr(obj, name))
            if isinstance(obj, (types.ModuleType, type)):
                if self.checker.project(obj):
                    label = qualname(obj) if isinstance(obj, type) else obj.__name__
                    self.checker.problem(node, f"{label} has no attribute {name!r}")
                return None
            return self.attribute(node, Instance(type(obj))) if self.checker.project(type(obj)) else None
        if isinstance(base, Instance):
            exists, value, _ = self.checker.classes.attribute(base.cls, name, self.guard)
            if not exists:
                self.checker.problem(node, f"{qualname(base.cls)} has no attribute {name!r}")
            return value
        return None

    def unannotated(self, node: ast.AST, value: Unannotated) -> None:
        if value.fixture not in self.checker.unannotated_reported:
            self.checker.unannotated_reported.add(value.fixture)
            self.checker.problem(node, f"fixture {value.fixture!r} has no return annotation: the calls made on "
                                       f"what it returns cannot be checked")

    def call(self, node: ast.Call) -> object:
        func = node.func
        if isinstance(func, ast.Attribute):
            base = self.value(func.value)
            if isinstance(base, Instance) and self.checker.project(base.cls):
                target = self.method(node, base.cls, func.attr)
            else:
                target = self.attribute(func, base)
        else:
            target = self.value(func)
        for a in node.args:
            self.value(a.value if isinstance(a, ast.Starred) else a)
        for k in node.keywords:
            self.value(k.value)
        if isinstance(target, Unannotated):
            self.unannotated(node, target)
            return None
        if isinstance(target, Factory):
            if target.n_args is not None and (node.keywords or len(node.args) != target.n_args or
                                              any(isinstance(a, ast.Starred) for a in node.args)):
                self.checker.problem(node, f"takes {target.n_args} positional arguments (its Callable annotation)")
            return target.returns
        if isinstance(target, _Method):
            self.bind_call(node, target.function, target.bound)
            return return_value(target.function)
        if isinstance(target, Known) and callable(target.value):
            obj = target.value
            if isinstance(obj, type):
                if self.checker.project(obj):
                    self.bind_call(node, obj, False)
                return Instance(obj)
            if self.checker.project(obj):
                self.bind_call(node, obj, False)
                return return_value(obj)
            return None
        if isinstance(target, Instance) and self.checker.project(target.cls):
            call = vars_in_mro(target.cls, "__call__")
            if call is not None and self.checker.project(call):
                self.bind_call(node, call, True)
                return return_value(call)
            if issubclass(target.cls, torch.nn.Module):
                self.bind_call(node, target.cls.forward, True)
                return return_value(target.cls.forward)
        return None

    def method(self, node: ast.Call, cls: type, name: str) -> object:
        exists, value, static = self.checker.classes.attribute(cls, name, self.guard)
        if not exists:
            self.checker.problem(node.func, f"{qualname(cls)} has no attribute {name!r}")
            return None
        if isinstance(static, staticmethod):
            return _Method(static.__func__, False)
        if isinstance(static, classmethod) or inspect.isfunction(static):
            return _Method(getattr(static, "__func__", static), True)
        return value

    def bind_call(self, node: ast.Call, fn: object, bound: bool) -> None:
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):
            return
        starred = any(isinstance(a, ast.Starred) for a in node.args)
        double = any(k.arg is None for k in node.keywords)
        args = [object()] * (int(bound) + len(node.args))
        kwargs = {k.arg: object() for k in node.keywords if k.arg is not None}
        try:
            if starred or double:  # how many arguments arrive is not known: check the keywords' names
                accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
                unknown = [k for k in kwargs if k not in signature.parameters or
                           signature.parameters[k].kind is inspect.Parameter.POSITIONAL_ONLY]
                if unknown and not accepts_any:
                    raise TypeError(f"got an unexpected keyword argument {unknown[0]!r}")
            else:
                signature.bind(*args, **kwargs)
        except TypeError as e:
            self.checker.problem(node, f"does not fit {qualname(fn)}{signature}: {e}")
            return
        if not self.checker.quiet:
            any_keyword = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
            self.checker.report.checked.append(Checked(node.lineno, position(node), qualname(fn), any_keyword))


@dataclass(frozen=True)
class _Method:
    function: object
    bound: bool  # called on an instance or class: the first parameter is filled


def vars_in_mro(cls: type, name: str) -> object:
    for c in _mro(cls):
        if name in vars(c):
            return vars(c)[name]
    return None


# --- entry points --------------------------------------------------------------------------------

def import_path(path: Path, name: str | None = None) -> types.ModuleType:
    """Import a file as a module of its own (test files are not a package)."""
    name = name or f"_checked.{path.stem}"  # not pytest's own name for the file
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def conftests(path: Path) -> list[types.ModuleType]:
    """The conftest.py modules that apply to a test file under tests/ (nearest first)."""
    found, folder = [], path.resolve().parent
    while folder.is_relative_to(ROOT / "tests"):
        conf = folder / "conftest.py"
        if conf.is_file():
            loaded = [m for m in list(sys.modules.values())
                      if getattr(m, "__file__", None) and Path(m.__file__).resolve() == conf]
            found.append(loaded[0] if loaded else import_path(conf))
        folder = folder.parent
    return found


def check_module(path: str | Path, fixture_modules: list[types.ModuleType] | None = None) -> Report:
    """Check every call the module at `path` makes into project code (see the module docstring)."""
    path = Path(path)
    source = path.read_text()
    module = import_path(path)
    report = Report(path)
    checker = _Checker(report, module, conftests(path) if fixture_modules is None else fixture_modules,
                       ClassReader(), source=source)
    Scope(checker, None).run(ast.parse(source).body)
    return report


def cuda_marked(path: Path) -> bool:
    """Whether a test file marks anything `cuda` (pytest.mark.cuda, on a test or the module)."""
    tree = ast.parse(path.read_text())
    return any(isinstance(n, ast.Attribute) and n.attr == "cuda" and isinstance(n.value, ast.Attribute) and
               n.value.attr == "mark" for n in ast.walk(tree))

