"""A second device on a CPU-only machine, for tests of code that mixes devices.

On the CPU `device="cpu"` hides device mixing: every tensor is on the one device. Inside
`fake_cuda()` a tensor moved to "cuda" (`.to("cuda")`, `.cuda()`, a module's `.to`,
`torch.zeros(..., device="cuda")`, `torch.as_tensor(x, device=...)`) stays in CPU
memory but is marked as being on `cuda:0`: it reports that device, results of
operations on it carry the mark, `.cpu()` removes it, and an operation that meets
marked and unmarked tensors raises as PyTorch does on a real GPU ("Expected all tensors
to be on the same device"), as does turning a marked tensor into a NumPy array.

PyTorch's rules copied here (aten's device checks, as of torch 2.x):
- a CPU tensor of 0 dimensions may join an operation on a GPU (a scalar);
- `cuda_tensor[cpu_index]` is allowed, `cpu_tensor[cuda_index]` is not;
- everything else with tensors on two devices raises.

Only the device bookkeeping is simulated: the arithmetic is the CPU's.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

FAKE = torch.device("cuda", 0)
_MARK = "_fake_cuda_device"
_TensorBase = torch._C.TensorBase


def on_fake_cuda(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and getattr(t, _MARK, False)


def _mark(t: torch.Tensor, on: bool = True) -> torch.Tensor:
    setattr(t, _MARK, on)
    return t


def _alias(t: torch.Tensor) -> torch.Tensor:
    """A new tensor object sharing `t`'s memory (and autograd history), so that marking
    it leaves `t` as it was."""
    return t.view_as(t)


def _is_cuda(device: Any) -> bool | None:
    """True for a cuda device, False for another, None for 'not a device'."""
    if isinstance(device, str | torch.device):
        return torch.device(device).type == "cuda"
    return None


def _descriptor(func) -> Any:
    return getattr(func, "__self__", None)


_CREATORS = {
    torch.zeros,
    torch.ones,
    torch.empty,
    torch.full,
    torch.arange,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.randperm,
    torch.tensor,
    torch.as_tensor,
    torch.zeros_like,
    torch.ones_like,
    torch.empty_like,
    torch.full_like,
    torch.eye,
    torch.linspace,
}
_BACKWARD = {torch.Tensor.backward, torch.autograd.backward}
# Functions that read or set metadata and compute nothing: no device check.
_METADATA = {
    "_has_compatible_shallow_copy_type",
    "is_same_size",
    "__get__",
    "__set__",
    "__repr__",
    "__format__",
    "__len__",
}


class _FakeCudaMode(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.params: list[weakref.ref] = []  # marked leaves whose .grad must be marked too

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        owner = _descriptor(func)
        if owner is _TensorBase.device and func.__name__ == "__get__":
            return FAKE if on_fake_cuda(args[0]) else func(*args, **kwargs)
        if owner is _TensorBase.is_cuda and func.__name__ == "__get__":
            return on_fake_cuda(args[0]) or func(*args, **kwargs)
        if owner is _TensorBase.data and func.__name__ == "__set__":
            # Module.to: `param.data = param.to(device)`; the Parameter object stays.
            target, value = args
            func(*args, **kwargs)
            _mark(target, on_fake_cuda(value))
            if on_fake_cuda(value):
                self.params.append(weakref.ref(target))
            return None
        if owner is _TensorBase.data and func.__name__ == "__get__":
            out = func(*args, **kwargs)
            return _mark(out, on_fake_cuda(args[0]))
        if func in (torch.Tensor.numpy, torch.Tensor.__array__) and on_fake_cuda(args[0]):
            raise TypeError(
                "can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy "
                "the tensor to host memory first."
            )
        if func in (torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu):
            return self._move(func, args, kwargs)
        if func in _CREATORS and "device" in kwargs:
            target = _is_cuda(kwargs.pop("device"))
            out = func(*args, **kwargs)
            if any(out is a for a in tree_flatten(args)[0]):
                out = _alias(out)
            return _mark(out, bool(target))
        if func in _BACKWARD:
            out = func(*args, **kwargs)
            for ref in self.params:
                param = ref()
                if param is not None and param.grad is not None:
                    _mark(param.grad)
            return out
        return self._checked(func, args, kwargs)

    def _move(self, func, args, kwargs):
        t, rest = args[0], list(args[1:])
        if func is torch.Tensor.cuda:
            target: bool | None = True
        elif func is torch.Tensor.cpu:
            target = False
        else:
            target = None
            if "device" in kwargs:
                target = _is_cuda(kwargs["device"])
                kwargs["device"] = "cpu"  # where the memory really is
            for i, a in enumerate(rest):
                if _is_cuda(a) is not None:
                    target = _is_cuda(a)
                    rest[i] = "cpu"
                    break
                if isinstance(a, torch.Tensor):  # .to(other): its device and dtype
                    target = on_fake_cuda(a)
                    rest[i] = a.dtype
                    break
        kwargs.pop("non_blocking", None)
        if func is torch.Tensor.to:
            out = t.to(*rest, **kwargs)
        else:
            out = t
        if target is None:  # a dtype change only: stays where it is
            return _mark(_alias(out) if out is t else out, on_fake_cuda(t))
        if target == on_fake_cuda(t):
            return out
        return _mark(_alias(out) if out is t else out, target)

    def _checked(self, func, args, kwargs):
        tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        marked = [t for t in tensors if on_fake_cuda(t)]
        plain = [t for t in tensors if not on_fake_cuda(t) and t.dim() > 0]
        name = getattr(func, "__name__", str(func))
        if marked and plain and name not in _METADATA:
            if name == "__getitem__" and on_fake_cuda(args[0]):
                pass  # a GPU tensor indexed by CPU indices: allowed
            else:
                raise RuntimeError(
                    "Expected all tensors to be on the same device, but found at least two "
                    f"devices, cuda:0 and cpu! (fake_cuda: in {name})"
                )
        out = func(*args, **kwargs)
        if marked:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    _mark(t)
        return out


@contextlib.contextmanager
def fake_cuda() -> Iterator[None]:
    """Inside: "cuda" is a second device living in CPU memory (see the module's doc);
    `torch.cuda.is_available()` stays as it is."""
    with _FakeCudaMode():
        yield
