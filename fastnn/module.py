"""Module: the base of every layer and model, owning or sharing a flat parameter buffer.

A leaf layer declares its parameters once (``_create_params``) and keeps them in a
buffer of its own; a container (``Sequential``) gathers every leaf below it into one
``FlatBuffer`` and rebinds each leaf's ``params``/``grads`` dicts to views into it, so
the model's optimizer step, allreduce and checkpoint each touch a single array.
"""
from __future__ import annotations

import functools
import itertools
import threading
from typing import Iterator, Mapping, NamedTuple

import numpy as np

from .checks import cast_in_range, check_bool, type_name
from .flat import FlatBuffer


class StateKeys(NamedTuple):
    """What ``load_state_dict`` did not match: the model's names missing from the state, and
    the state's names the model does not have (as torch's ``load_state_dict`` returns)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class Views(dict):
    """A layer's ``params`` or ``grads``: name -> view into the model's flat buffer. Values are
    written in place (``layer.params["weight"][...] = w``). Replacing an entry (torch's
    ``layer.weight = Parameter(w)``, Keras's ``assign``) would leave the layer reading an array
    the optimizer never updates, so it raises TypeError, as every other change of the keys
    (an in-place operator, ``params["weight"] -= lr * g``, stores the same array: allowed)."""

    def _refuse(self, *args, **kwargs) -> None:
        raise TypeError("a layer's params and grads are views into the model's flat buffer, which the optimizer "
                        "updates: write into them in place, e.g. layer.params['weight'][...] = value")

    __delitem__ = update = setdefault = pop = popitem = clear = __ior__ = _refuse

    def __setitem__(self, name: str, value: object) -> None:
        """Only the entry itself: ``params["weight"] -= lr * g`` has written in place already, then
        stores the same array back."""
        if name not in self or value is not dict.__getitem__(self, name):
            self._refuse()

    def __reduce__(self) -> tuple:
        return Views, (dict(self),)


#: numbers each forward as it completes, in every module (the pairing guard of ``backward``);
#: _LATEST[0] is the last number given (no module can have run a forward since a model whose
#: stamp it is: its backward need not look inside)
_FORWARDS = itertools.count(1)
_LATEST = [0]


def _stamps_after(stamp: int) -> None:
    """Number the forwards from here on after ``stamp`` (a module unpickled from a process that
    had numbered further keeps its stamps, so a layer's forward after its model's stays later)."""
    global _FORWARDS
    _FORWARDS = itertools.count(stamp + 1)
    _LATEST[0] = stamp


#: per thread: ``depth``, the forwards running now (a layer's forward inside its container's);
#: ``run``, the id of the outermost one, from _RUN_IDS (a layer that runs twice within one run,
#: before a backward, keeps its second run's activations only); ``backwards``, the backwards
#: finished (a model's failed backward after some of its layers finished theirs cannot be
#: retried: those gradients would be added twice)
_RUN_IDS = itertools.count(1)
_LOCAL = threading.local()


def _stamped(forward):
    """A layer's forward that records its completion: ``_pending`` (a backward may follow) and
    ``_stamp``, later than its sub-modules' stamps from this same forward; run inside another
    module's forward, whether it ran already in that outermost forward (``_twice``)."""
    @functools.wraps(forward)
    def run(self, x, *args, **kwargs):
        d, local = self.__dict__, _LOCAL
        depth = getattr(local, "depth", 0)
        if depth == 0:                  # the outermost forward: a run of its own
            local.run = d["_run"] = next(_RUN_IDS)
            d["_twice"] = False
        else:       # (a subclass's forward calling super()'s finds _pending False: not twice)
            run_ = local.run
            d["_twice"] = d.get("_run") == run_ and d.get("_pending", False)
            d["_run"] = run_
        d["_pending"] = False           # a forward that fails partway leaves mixed activations
        local.depth = depth + 1
        try:
            y = forward(self, x, *args, **kwargs)
        finally:
            local.depth = depth
        d["_stamp"] = _LATEST[0] = next(_FORWARDS)
        d["_pending"] = True
        return y
    return run


def _paired(backward):
    """A layer's backward that, called on the model itself (not by a container running it),
    differentiates the model's most recent forward, once; run by its container, the activations
    of one run (a layer run twice in one forward of the model keeps the second run's only). On
    the model, it tells the gradient hooks (data parallelism) when the backward begins and that
    every gradient is final at its end (``Sequential`` also reports each layer's as it goes)."""
    @functools.wraps(backward)
    def run(self, dy, *args, **kwargs):
        d = self.__dict__
        if d.get("_in_backward"):       # a subclass's backward calling super()'s, on a model with hooks
            return backward(self, dy, *args, **kwargs)
        root = d.get("_parent") is None
        if root:
            self._check_paired()
        elif d.get("_twice"):
            raise RuntimeError(f"{type(self).__name__}.backward: the layer ran twice in the model's last forward and "
                               "keeps the second run's activations only, so a gradient would be wrong; make a second "
                               "layer for the second use")
        hooks = root and bool(d.get("_grad_hooks"))
        local = _LOCAL
        done = getattr(local, "backwards", 0)
        if hooks:                       # told once (a subclass's backward calling super()'s: not again)
            d["_in_backward"] = True
        try:
            if hooks:
                self._grads_ready_from(self._flat.grad.size)
            dx = backward(self, dy, *args, **kwargs)
            if hooks:
                self._grads_ready_from(0)
        except BaseException as e:
            # a retry would add again what was written: by layers inside that finished, by anything
            # interrupted (no Exception), by a module of sub-layers with gradients of its own
            if root and (getattr(local, "backwards", 0) != done or not isinstance(e, Exception)
                         or (d.get("params") and self.children())):
                d["_pending"] = False
            raise
        finally:
            if hooks:
                d["_in_backward"] = False
        d["_pending"] = False           # done (a backward refused before any layer's finished may be retried)
        local.backwards = getattr(local, "backwards", 0) + 1
        return dx
    return run


class Module:
    """Base class: ``forward(x) -> y``, ``backward(dy) -> dx`` (accumulating parameter
    gradients into ``grads``), ``output_shape``/``macs`` per sample for ``summary``.

    A subclass's ``forward`` and ``backward`` (a user's own layer's too) are wrapped so that a
    model's ``backward`` differentiates its most recent complete forward once: a second backward
    without a forward in between, or after a layer inside the model ran a forward of its own
    (``model[0](x2)``, ``model[:-1](x2)``), is a RuntimeError, not a silently wrong gradient."""

    dtype: np.dtype | None = None
    #: whether ``backward`` must return the input gradient; a model's first layer may skip it
    #: (``model.input_grad = False``: training needs no gradient with respect to the data)
    input_grad: bool = True

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        own = vars(cls)
        if "forward" in own:
            cls.forward = _stamped(own["forward"])
        if "backward" in own:
            cls.backward = _paired(own["backward"])

    def _check_paired(self) -> None:
        """RuntimeError unless a forward of this model completed since its last backward, and no
        module inside it ran a forward after that one (it would hold another batch's activations)."""
        if not self.__dict__.get("_pending", False):
            raise RuntimeError(f"{type(self).__name__}.backward without a complete forward since the last backward "
                               "(none ran, or the last one failed): each backward differentiates the most recent "
                               "forward, once (two forwards then two backwards would pair the first gradient with "
                               "the second forward's activations); run forward and backward in pairs, or "
                               "concatenate the inputs into one batch")
        if self._stamp == _LATEST[0]:
            return
        later = [(path, m) for path, m in self.modules() if m.__dict__.get("_stamp", 0) > self._stamp]
        if later:
            path, m = later[0]
            raise RuntimeError(f"backward: layer {path!r} ({type(m).__name__}) ran a forward of its own after "
                               "this model's forward, so it holds another batch's activations: each backward "
                               "differentiates the model's most recent forward; run the model's forward again")

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        """The per-sample input shape this layer accepts, where it fixes one (``summary`` starts
        from the first layer's), else None."""
        return None

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = Views()
        self.grads: dict[str, np.ndarray] = Views()
        #: state that is not trained (BatchNorm's running statistics): arrays of the layer's own,
        #: written in place, saved by ``state_dict`` and checkpoints
        self.buffers: dict[str, np.ndarray] = {}
        self.training = True
        self._flat: FlatBuffer | None = None
        self._parent: Module | None = None
        self._grad_hooks: list = []
        #: samples in the last batch passed to ``model(x)`` (data parallelism weighs uneven shares)
        self.batch_rows: int | None = None

    # -- structure -------------------------------------------------------------------
    def children(self) -> list[tuple[str, "Module"]]:
        """Named direct sub-modules, as torch registers them: every Module held in an attribute
        (``self.fc1 = Dense(...)``; one in a list or tuple is named "<attribute>.<index>", in a
        dict "<attribute>.<key>": layers and None, read up to the first other item), in the order
        they were assigned. Empty for a leaf layer."""
        named = []
        for name, v in self.__dict__.items():
            if isinstance(v, Module) and name != "_parent":
                named.append((name, v))
            elif isinstance(v, (list, tuple)) or (isinstance(v, dict) and not isinstance(v, Views)):
                for k, m in (v.items() if isinstance(v, dict) else enumerate(v)):
                    if isinstance(m, Module):
                        named.append((f"{name}.{k}", m))
                    elif m is not None:     # a list of data, not of layers: not read through (it may be long)
                        break
        return named

    def modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        """Every module of the tree, depth first, with its qualified name: once, as torch's
        ``named_modules`` (a module held twice, e.g. a tied layer in another's attribute, under its
        first name)."""
        return self._modules_once(prefix, set())

    def _modules_once(self, prefix: str, seen: set[int]) -> Iterator[tuple[str, "Module"]]:
        if id(self) in seen:
            return
        seen.add(id(self))
        yield prefix, self
        for name, child in self.children():
            yield from child._modules_once(f"{prefix}.{name}" if prefix else name, seen)

    def named_parameters(self) -> list[tuple[str, np.ndarray]]:
        """``(qualified name, view)`` for every parameter, in buffer order ("0.weight", ...)."""
        return [(f"{mp}.{n}" if mp else n, v) for mp, m in self.modules() for n, v in m.params.items()]

    def parameters(self) -> list[np.ndarray]:
        """Every parameter's view, in buffer order (torch's ``parameters()``, as a list); the
        whole set is also ``flat.data``, one array."""
        return [v for _, v in self.named_parameters()]

    def named_buffers(self) -> list[tuple[str, np.ndarray]]:
        """``(qualified name, array)`` for every buffer ("1.running_mean", ...), as torch's."""
        return [(f"{mp}.{n}" if mp else n, v) for mp, m in self.modules() for n, v in m.buffers.items()]

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter by qualified name, in buffer order, then of every buffer
        (as torch's): a snapshot that later training does not change (the model alone;
        ``fastnn.checkpoint`` saves a whole run)."""
        return {n: v.copy() for n, v in [*self.named_parameters(), *self.named_buffers()]}

    def load_state_dict(self, state: dict[str, np.ndarray], strict: bool = True) -> StateKeys:
        """Copy ``state`` (name -> array, e.g. from ``state_dict``) into the parameters, cast
        to the model's dtype; shapes must match exactly. ``strict``: the names must be exactly
        the model's. Everything is checked before any value is written, so a refused state
        leaves the model as it was. Returns the model's names missing from ``state`` and the
        names of ``state`` the model does not have."""
        if not isinstance(state, Mapping):
            raise TypeError(f"load_state_dict: expected a mapping of parameter name to array, got "
                            f"{type(state).__name__}")
        own = dict([*self.named_parameters(), *self.named_buffers()])
        missing = [n for n in own if n not in state]
        unexpected = [n for n in state if n not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: expected the model's parameter names, got {len(missing)} missing "
                           f"{missing[:5]} and {len(unexpected)} unexpected {unexpected[:5]}")
        values = {}
        for n in own.keys() & state.keys():
            try:
                v = np.asarray(state[n])
            except ValueError as e:         # a ragged nested list
                raise ValueError(f"load_state_dict: {n}: expected real numbers of shape {own[n].shape}, got "
                                 f"{type_name(state[n])} that is no array ({e})") from None
            if v.shape != own[n].shape:
                raise ValueError(f"load_state_dict: {n}: expected shape {own[n].shape}, got {v.shape}")
            if v.dtype.kind not in "iuf" or (own[n].dtype.kind == "i" and v.dtype.kind == "f"):
                want = "integers" if own[n].dtype.kind == "i" else "real numbers"
                raise TypeError(f"load_state_dict: {n}: expected {want}, got dtype {v.dtype}")
            values[n] = cast_in_range(v, own[n].dtype, f"load_state_dict: {n}")
        for n, v in values.items():
            own[n][...] = v
        return StateKeys(missing, unexpected)

    @property
    def flat(self) -> FlatBuffer:
        """The model's flat buffer: ``flat.data`` holds every parameter, ``flat.grad`` the gradients.
        A module of one's own with sub-modules in attributes gathers theirs into it here, at the
        first use (making an optimizer from it)."""
        if self._parent is not None:
            raise AttributeError(
                f"{type(self).__name__} is part of a larger model; use the model's .flat")
        tree = list(self.modules())
        for path, m in tree:
            m._check_no_stray_layers(path)
        if any(m.__dict__.get("_flat") is not None for _, m in tree[1:]):
            self._adopt_children()     # a sub-module holds a buffer of its own (new, or never gathered)
        if self._flat is None:
            raise AttributeError(f"{type(self).__name__} has no parameters")
        return self._flat

    def _check_no_stray_layers(self, path: str) -> None:
        """TypeError where a container that lists its own children (Sequential, Concat, ...; a
        subclass of one) holds a layer in an attribute that is none of them: the model would
        never train it."""
        if type(self).children is Module.children:
            return
        listed = {id(m) for _, m in self.children()}
        stray = [(n, m) for n, m in Module.children(self) if id(m) not in listed]
        if stray:
            name, m = stray[0]
            raise TypeError(f"{type(self).__name__}{f' {path!r}' if path else ''} holds {type(m).__name__} in its "
                            f"attribute {name!r}, which is none of its {type(self).__mro__[1].__name__} children "
                            f"{[n for n, _ in self.children()][:5]}: the model would never train it; pass it as a "
                            "layer, or subclass fnn.Module to hold layers in attributes")

    @property
    def num_params(self) -> int:
        return sum(v.size for _, v in self.named_parameters())

    def create_params(self, values: Mapping[str, np.ndarray]) -> None:
        """Declare a layer's own parameters, once, in its ``__init__`` after ``super().__init__()``:
        name -> initial values (an array of any shape). The layer reads and writes them as
        ``self.params[name]`` and accumulates their gradients (zero to start) into
        ``self.grads[name]`` in place; a model gathers them into its flat buffer with every other
        layer's. Their dtype is ``self.dtype`` where the layer set one, else its sub-layers' (those
        created before), else float32, fastnn's default: the values are cast to it."""
        if self.__dict__.get("params"):
            raise ValueError(f"{type(self).__name__}.create_params: the layer has parameters already "
                             f"({sorted(self.params)}): declare all of them in one call")
        if "params" not in self.__dict__:
            raise TypeError(f"{type(self).__name__}.create_params: call super().__init__() first")
        if not isinstance(values, Mapping) or not values:
            raise TypeError(f"{type(self).__name__}.create_params: expected a non-empty dict of name -> array, "
                            f"got {type_name(values)}")
        arrays = {}
        for name, v in values.items():
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"{type(self).__name__}.create_params: expected names without dots, got {name!r}")
            arrays[name] = np.asarray(v)
            if arrays[name].dtype.kind not in "iuf":
                raise TypeError(f"{type(self).__name__}.create_params: {name}: expected real numbers, got dtype "
                                f"{arrays[name].dtype}")
        if self.dtype is None:          # the sub-layers' (as torch's default dtype: float32)
            below = {np.dtype(m.dtype) for _, m in itertools.islice(self.modules(), 1, None) if m.params}
            self.dtype = below.pop() if len(below) == 1 else np.float32
        self.dtype = np.dtype(self.dtype)
        self._create_params(arrays)

    def _create_params(self, values: dict[str, np.ndarray], grads: dict[str, np.ndarray] | None = None) -> None:
        """Leaf layers: allocate a buffer of their own holding ``values`` (and ``grads``, else zeros)."""
        self._flat = FlatBuffer({k: v.shape for k, v in values.items()}, self.dtype)
        for k, v in values.items():
            self._flat.view(k)[...] = v
            if grads is not None:
                self._flat.grad_view(k)[...] = grads[k]
        self._bind(self._flat, "")

    def _bind(self, flat: FlatBuffer, prefix: str) -> None:
        self.params = Views({n: flat.view(prefix + n) for n in self.params or self._flat.slots})
        self.grads = Views({n: flat.grad_view(prefix + n) for n in self.params})

    def _adopt_children(self) -> None:
        """Containers: gather every parameter below (and the container's own, if it has some)
        into one buffer and rebind the layers."""
        tree = self._tree()
        leaves = [(mp, m) for mp, m, _ in tree if m.params]
        dtypes: dict[np.dtype, list[str]] = {}
        for mp, m in leaves:
            dtypes.setdefault(np.dtype(m.dtype), []).append(repr(mp) if mp else f"{type(m).__name__}'s own")
        if len(dtypes) > 1:
            shown = ", ".join(f"{dt} (layers {', '.join(paths[:3])}{', ...' if len(paths) > 3 else ''})"
                              for dt, paths in sorted(dtypes.items(), key=lambda kv: str(kv[0])))
            raise TypeError(f"all layers of a model must share one dtype, got {shown}")
        inside = {id(m) for _, m, _ in tree}
        for path, m, parent in tree[1:]:      # all checked before any is adopted
            if m._parent is not None and m._parent is not parent and id(m._parent) not in inside:
                raise ValueError(f"layer {path} ({type(m).__name__}) already belongs to another model")
        for _, m, parent in tree[1:]:
            m._parent = parent
        self.dtype = next(iter(dtypes)) if dtypes else self.dtype
        self._adopted = True                # copies gather theirs too (``__setstate__``)
        if not leaves:
            return
        prefixes = {id(m): f"{mp}." if mp else "" for mp, m in leaves}
        shapes = {f"{prefixes[id(m)]}{n}": v.shape for _, m in leaves for n, v in m.params.items()}
        flat = FlatBuffer(shapes, self.dtype)
        for _, m in leaves:               # values and accumulated gradients move with the layer
            for n, v in m.params.items():
                flat.view(f"{prefixes[id(m)]}{n}")[...] = v
                flat.grad_view(f"{prefixes[id(m)]}{n}")[...] = m.grads[n]
            m._bind(flat, prefixes[id(m)])
        for _, m, _ in tree[1:]:
            m._flat = None
        self._flat = flat

    def _tree(self) -> list[tuple[str, "Module", "Module | None"]]:
        """``(path, module, parent)`` for each module once, depth first; checked: a layer that a
        container (Sequential, Concat, ...) lists twice would run twice in one forward, keeping the
        second run's activations for both backwards, so it is refused (a layer held again in an
        attribute, as a tied weight is, is one module: counted once)."""
        tree: list[tuple[str, Module, Module | None]] = []
        seen: set[int] = set()
        listed: dict[int, str] = {}     # module -> where a container lists it

        def visit(path: str, m: Module, parent: Module | None) -> None:
            if "params" not in m.__dict__:
                raise TypeError(f"layer {path!r} ({type(m).__name__}) was not set up as a fastnn Module: its "
                                "__init__ must call super().__init__() first")
            if parent is not None and type(parent).children is not Module.children:
                if id(m) in listed:
                    raise ValueError(f"layer {path!r} is the same object as layer {listed[id(m)]!r}: expected each "
                                     f"layer once in a model ({type(m).__name__}; make a second one to use it twice)")
                listed[id(m)] = path
            if id(m) in seen:
                return
            seen.add(id(m))
            tree.append((path, m, parent))
            for name, child in m.children():
                visit(f"{path}.{name}" if path else name, child, m)

        visit("", self, None)
        return tree

    def rehome(self, *, data: np.ndarray | None = None, grad: np.ndarray | None = None,
               copy: bool = True) -> None:
        """Move the model's flat parameters and/or gradient into new 1-D contiguous buffers of
        the same size and dtype (e.g. shared memory), copying the current values unless
        ``copy`` is False, and rebind every layer's ``params``/``grads`` views to them. Views
        taken from the old buffers keep pointing at the old memory."""
        flat = self.flat
        for name, new in (("data", data), ("grad", grad)):
            if new is None:
                continue
            old = getattr(flat, name)
            if not isinstance(new, np.ndarray):
                raise TypeError(f"rehome {name}: expected a numpy.ndarray, got {type_name(new)}")
            if (new.shape != old.shape or new.dtype != old.dtype or not new.flags.c_contiguous
                    or not new.flags.writeable):
                raise ValueError(f"rehome {name}: expected a contiguous, writeable {old.dtype}{old.shape} buffer, "
                                 f"got {new.dtype}{new.shape} (contiguous={new.flags.c_contiguous}, "
                                 f"writeable={new.flags.writeable})")
        if np.shares_memory(flat.data if data is None else data, flat.grad if grad is None else grad):
            raise ValueError("rehome: expected the parameters and the gradient in separate memory, got "
                             "overlapping buffers (backward would overwrite the weights)")
        moves = [(name, new) for name, new in (("data", data), ("grad", grad)) if new is not None]
        if copy:                  # every copy before anything moves
            for name, new in moves:
                new[...] = getattr(flat, name)
        for name, new in moves:
            setattr(flat, name, new)
        for prefix, m in self.modules():
            if m.params:
                m._bind(flat, f"{prefix}." if prefix else "")

    def __getstate__(self) -> dict:
        """``copy.deepcopy`` and ``pickle`` leave out the model a layer belongs to: a layer copied
        on its own comes back a layer of its own (as torch's), not part of a copy of its model;
        and the gradient hooks (a DataParallel wrapper's: the copy is not wrapped, as torch's
        ``copy.deepcopy(ddp.module)``)."""
        return {**self.__dict__, "_parent": None, "_grad_hooks": []}

    def __setstate__(self, state: dict) -> None:
        """``copy.deepcopy`` and ``pickle``: the copy's parameters and gradients are again one
        aligned buffer pair with every layer's ``params``/``grads`` views into it (copied one by
        one, each view came back an array of its own: backward wrote where the optimizer did
        not read, and the step went where the layers did not look). A leaf comes back with a
        buffer of its own; a container, rebuilt after its layers, gathers theirs into one."""
        self.__dict__.update(state)
        self.__dict__.setdefault("buffers", {})     # pickled before modules had buffers
        if state.get("_stamp", 0) > _LATEST[0]:   # another process's numbering, ahead of this one's
            _stamps_after(state["_stamp"])
        if self.children() and (state.get("_adopted") or type(self).children is not Module.children):
            self._adopt_children()      # as the original had gathered them (a container pickled before
        elif self.params:               # the flag always had); a module that never had, keeps to itself
            self._create_params(dict(self.params), dict(self.grads))

    def __copy__(self) -> "Module":
        """``copy.copy``: a second handle on the same parameters, layers and buffer, as torch's;
        the original is left as it was (its buffer, and so its optimizer, stay where they are)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def register_grad_ready_hook(self, hook) -> None:
        """Call ``hook(offset)`` during ``backward`` whenever every gradient at flat-buffer
        offsets >= ``offset`` is final for this step (data parallelism starts reducing
        those buckets while the rest of backward runs); first with ``offset`` = the size of
        the gradient buffer, before a backward writes anything."""
        self._grad_hooks.append(hook)

    def remove_grad_ready_hook(self, hook) -> None:
        self._grad_hooks.remove(hook)

    def _grads_ready_from(self, offset: int) -> None:
        for hook in self._grad_hooks:
            hook(offset)

    # -- running ---------------------------------------------------------------------
    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.batch_rows = x.shape[0] if isinstance(x, np.ndarray) and x.ndim else None
        return self.forward(x)

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        """Accumulate parameter gradients and return dL/dx (None when ``input_grad`` is off)."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> "Module":
        """Training mode (True: dropout drops) or evaluation mode (False), for every layer."""
        mode = check_bool(mode, "train mode")
        for _, m in self.modules():
            m.training = mode
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for _, g in self.named_gradients():
            g[...] = 0

    def named_gradients(self) -> list[tuple[str, np.ndarray]]:
        return [(f"{mp}.{n}" if mp else n, v) for mp, m in self.modules() for n, v in m.grads.items()]

    # -- description -----------------------------------------------------------------
    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample output shape for a per-sample input shape (no batch axis): by default the
        input's, as an elementwise layer gives; a module of one's own with sub-modules defines it
        (``summary`` cannot know what its forward makes of them)."""
        if self.children():
            raise TypeError(f"{type(self).__name__}: summary needs the per-sample output shape of this module of "
                            f"sub-modules: define {type(self).__name__}.output_shape(input_shape) (and macs(input_shape)"
                            " for its multiply-adds)")
        return tuple(input_shape)

    def _expect_input(self, input_shape: tuple[int, ...], want: tuple[int | None, ...]) -> None:
        """ValueError unless a per-sample ``input_shape`` fits ``want`` (None: any size)."""
        if len(input_shape) != len(want) or any(w is not None and w != s for w, s in zip(want, input_shape)):
            shown = str(tuple("any" if w is None else w for w in want)).replace("'", "")
            raise ValueError(f"{type(self).__name__}: expected a per-sample input of shape {shown}, "
                             f"got {tuple(input_shape)}")

    def macs(self, input_shape: tuple[int, ...]) -> int:
        """Multiply-adds per sample of the forward pass."""
        return 0

    def rngs(self) -> list[tuple[str, np.random.Generator]]:
        """Random generators of the tree (dropout), by module name, for checkpoints."""
        return [(mp, m.rng) for mp, m in self.modules() if isinstance(getattr(m, "rng", None), np.random.Generator)]

    def __repr__(self) -> str:
        """``Type()`` for a leaf; a container lists its children one per line, a nested
        container's lines indented one level more (torch's form)."""
        inner = "".join(f"\n  ({n}): " + repr(m).replace("\n", "\n  ") for n, m in self.children())
        return f"{type(self).__name__}({inner}\n)" if inner else f"{type(self).__name__}()"

