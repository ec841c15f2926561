"""Sequential: layers applied in order, sharing one flat parameter buffer."""
from __future__ import annotations

import numpy as np

from ..module import Module


class Sequential(Module):
    """``Sequential(layer0, layer1, ...)``: forward in order, backward in reverse.

    On construction every parameter of every layer moves into one flat buffer
    (``model.flat.data``, gradients in ``model.flat.grad``), named "<index>.<param>".
    """

    def __init__(self, *layers: Module) -> None:
        super().__init__()
        if not layers:
            raise ValueError("Sequential: expected at least one layer, got none")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: layer {i} must be a fastnn Module, got {type(layer).__name__}")
        self.layers = list(layers)
        self._adopt_children()

    def _adopt_children(self) -> None:
        """Gather the layers' parameters (again, when a layer was replaced), then note the flat
        offset from which all gradients are final once layer i's backward has run."""
        super()._adopt_children()
        starts = [min((s.start for n, s in self._flat.slots.items() if n.split(".", 1)[0] == str(i)),
                      default=None) if self._flat else None for i in range(len(self.layers))]
        self._ready_from = [min((s for s in starts[i:] if s is not None), default=None) for i in range(len(starts))]

    def children(self) -> list[tuple[str, Module]]:
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    def __getitem__(self, i: int | slice) -> "Module | Slice":
        """Layer ``i``, or for a slice a runnable ``Slice`` of the layers (as ``torch``'s
        ``model[:-1]``), whose parameters stay in this model's buffer."""
        if isinstance(i, slice):
            return Slice(self.layers[i])
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        """Differentiates the most recent forward (each layer keeps that one's activations), once
        (``Module``'s guard: torch's "backward through the graph a second time")."""
        for i in range(len(self.layers) - 1, -1, -1):
            dy = self.layers[i].backward(dy)
            if self._grad_hooks and self._ready_from[i] is not None:
                self._grads_ready_from(self._ready_from[i])
            if dy is None:        # input_grad off: the layers before have no parameters to update
                break
        return dy

    @property
    def input_grad(self) -> bool:
        return self.layers[0].input_grad

    @input_grad.setter
    def input_grad(self, value: bool) -> None:
        """Off: the first layer with parameters skips its input gradient and the parameter-free
        layers before it are not run backward (``backward`` returns None)."""
        for layer in self.layers:
            layer.input_grad = value
            if layer.named_parameters():
                break

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        return self.layers[0].sample_shape

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        for layer in self.layers:
            input_shape = layer.output_shape(input_shape)
        return input_shape

    def macs(self, input_shape: tuple[int, ...]) -> int:
        total = 0
        for layer in self.layers:
            total += layer.macs(input_shape)
            input_shape = layer.output_shape(input_shape)
        return total

    def summary(self, input_shape: tuple[int, ...] | None = None, print_fn=print) -> list[dict]:
        """Print and return one row per layer: name, type, per-sample output shape, parameter
        count and multiply-adds per sample, then a "total" row. ``input_shape`` is per sample
        (no batch axis); when None it is the first layer's ``sample_shape`` (Dense,
        BlockDiagonalDense and the locally connected layers fix one)."""
        rows, shape = [], _summary_input(self, input_shape)
        for name, layer in self.children():
            macs = layer.macs(shape)
            shape = layer.output_shape(shape)
            rows.append({"name": name, "type": type(layer).__name__, "output_shape": shape,
                         "params": layer.num_params, "macs": macs})
        rows.append({"name": "total", "type": "", "output_shape": shape,
                     "params": sum(r["params"] for r in rows), "macs": sum(r["macs"] for r in rows)})
        if print_fn is not None:
            print_fn(_format_rows(rows))
        return rows


def _summary_input(model: Module, input_shape) -> tuple[int, ...]:
    """``summary``'s per-sample input shape: ``input_shape`` checked, or the model's own."""
    if input_shape is not None and (not isinstance(input_shape, (tuple, list)) or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in input_shape)):
        raise TypeError(f"summary: input_shape must be a tuple of ints (per sample, no batch axis), got "
                        f"{type(input_shape).__name__} {input_shape!r}")
    if input_shape is None:
        input_shape = model.sample_shape
        if input_shape is None:
            raise ValueError("summary: the model's first layer (or branch) does not fix the input shape; pass "
                             "input_shape")
    return tuple(int(d) for d in input_shape)


def _format_rows(rows: list[dict]) -> str:
    head = ("layer", "type", "output shape", "params", "mult-adds")
    body = [(r["name"], r["type"], str((None, *r["output_shape"])), f"{r['params']:,}", f"{r['macs']:,}")
            for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    rule = "-" * len(line(head))
    return "\n".join([line(head), rule, *map(line, body[:-1]), rule, line(body[-1])])


class Slice:
    """Consecutive layers of a ``Sequential`` (``model[i:j]``), run in order: forward and
    backward as the model runs them (gradients accumulate in the model's buffer). It owns
    nothing: train it through the model and its optimizer."""

    def __init__(self, layers: list[Module]) -> None:
        self.layers = layers

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
            if dy is None:
                return None
        return dy

    def __len__(self) -> int:
        return len(self.layers)

    def train(self, mode: bool = True) -> "Slice":
        """Training (True) or evaluation mode for these layers, as ``Module.train``."""
        for layer in self.layers:
            layer.train(mode)
        return self

    def eval(self) -> "Slice":
        return self.train(False)

    def __getitem__(self, i: int | slice) -> "Module | Slice":
        return Slice(self.layers[i]) if isinstance(i, slice) else self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def __repr__(self) -> str:
        return "Slice(" + ", ".join(repr(layer) for layer in self.layers) + ")"
