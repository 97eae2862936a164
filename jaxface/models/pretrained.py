"""Pretrained backbones: torchvision ResNet-18/34/50 weights in `jaxface.models.resnet.ResNet`.

The weights are a file the user downloaded; nothing is fetched at run time. Two formats
are read, neither needs torch:

* ``.pth`` / ``.pt``: a state dict written by ``torch.save`` in its zip format (the
  default since torch 1.6; torchvision's published ``resnet18-f37072fd.pth``,
  ``resnet34-b627a593.pth``, ``resnet50-0676ba61.pth`` are such files). The archive
  holds ``<name>/data.pkl`` (the pickled dict) and one raw little-endian record per
  storage, ``<name>/data/<key>``. A .pth file is a pickle from an untrusted source, so
  it is read by a restricted unpickler that resolves only ``collections.OrderedDict``,
  ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` and the ``torch.*Storage``
  types -- mapped to NumPy here -- and refuses every other global (e.g. ``os.system``).
  A legacy (pre-1.6, non-zip) file is refused with the command that re-saves it.
* ``.safetensors``: an 8-byte little-endian header length, a JSON header
  ``{name: {"dtype", "shape", "data_offsets": [begin, end]}}`` and the raw bytes.

`convert_torchvision_resnet` maps torchvision's names onto the ResNet's
(``conv1`` / ``bn1`` -> ``stem``, ``layerK.N`` -> ``res{K+1}_blockN``, ``convM`` /
``bnM`` -> ``conv_bnM``, ``downsample.0`` / ``.1`` -> ``downsample``; ``fc`` -> ``fc``
when the model has one, else ignored), convolution kernels OIHW -> HWIO, BatchNorm
``weight`` / ``bias`` -> params ``scale`` / ``bias`` and ``running_mean`` /
``running_var`` -> the ``batch_stats`` ``mean`` / ``var``. Anything that does not fit --
a key the model needs but the file lacks, a model entry with no torchvision
counterpart, a shape mismatch, a key of the file the model does not use (other than
``fc.*`` and ``num_batches_tracked``) -- is one ValueError naming every such key.

torchvision's weights expect RGB in [0, 1] normalised with the ImageNet statistics
`IMAGENET_MEAN` / `IMAGENET_STD`; `ResNet(input_norm="imagenet")` maps jaxface's
[-1, 1] images (`jaxface.tasks.common.normalize_image`) to that input, and the tasks set
it whenever ``config.model.backbone.pretrained`` is set.

`load_backbone` puts a file's weights into the backbone subtree of a task's full
params / model state (the tasks' ``load_pretrained``; the trainer calls it when a run
starts without a checkpoint or ``init_from``).
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import re
import zipfile
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "WEIGHTS_ENV",
    "weights_dir",
    "weights_file",
    "read_state_dict",
    "read_torch_state_dict",
    "read_safetensors",
    "torchvision_key",
    "convert_torchvision_resnet",
    "load_backbone",
]

# Where downloaded weight files live: $JAXFACE_WEIGHTS, else ~/.cache/jaxface/weights.
WEIGHTS_ENV = "JAXFACE_WEIGHTS"
DEFAULT_WEIGHTS_DIR = "~/.cache/jaxface/weights"


def weights_dir() -> str:
    return os.path.expanduser(os.environ.get(WEIGHTS_ENV, DEFAULT_WEIGHTS_DIR))


def weights_file(name: str) -> str:
    """The path of a downloaded weight file ``name`` in `weights_dir`."""
    return os.path.join(weights_dir(), name)


# ---------------------------------------------------------------------------------
# torch.save zip files, read with a restricted unpickler
# ---------------------------------------------------------------------------------

_TORCH_STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


def _np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes  # a jax dependency; only bfloat16 files need it

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class _StorageType:
    """Stands for a ``torch.<X>Storage`` class in the pickle: only its dtype matters."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _np_dtype(_TORCH_STORAGE_DTYPES[name])


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
):
    del requires_grad, backward_hooks, metadata
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise pickle.UnpicklingError("a tensor's storage is not a persistent storage record")
    if len(size) != len(stride) or any(s < 0 for s in size + stride) or offset < 0:
        raise pickle.UnpicklingError(f"invalid tensor layout size={size} stride={stride}")
    n = int(np.prod(size, dtype=np.int64))
    if n == 0:
        return np.zeros(size, storage.dtype)
    if n > storage.shape[0]:  # only zero strides could do it: not a state dict's tensor
        raise pickle.UnpicklingError(
            f"tensor size={size} has more elements than its storage ({storage.shape[0]})"
        )
    last = offset + sum((sz - 1) * st for sz, st in zip(size, stride))
    if last >= storage.shape[0]:
        raise pickle.UnpicklingError(
            f"tensor size={size} stride={stride} offset={offset} reaches past its storage "
            f"of {storage.shape[0]} elements"
        )
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(s * item for s in stride), writeable=False
    )
    return np.array(view, copy=True)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    del requires_grad, backward_hooks
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict into NumPy; refuses any global it does not know."""

    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str, path: str):
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._byteorder = byteorder
        self._path = path
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module, name):
        fn = self._ALLOWED.get((module, name))
        if fn is not None:
            return fn
        if module == "torch" and name in _TORCH_STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"{self._path}: refusing to unpickle the global {module}.{name} (a .pth file "
            "may only hold a state dict of tensors; it is read without executing code)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"{self._path}: unknown persistent record {str(pid)[:80]}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"{self._path}: storage {key!r} has no torch storage type")
        key = str(key)
        if key not in self._storages:
            name = f"{self._prefix}data/{key}"
            try:
                raw = self._archive.read(name)
            except KeyError:
                raise pickle.UnpicklingError(f"{self._path}: record {name} is missing") from None
            dtype = storage_type.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
            if len(raw) != int(numel) * dtype.itemsize:
                raise pickle.UnpicklingError(
                    f"{self._path}: record {name} holds {len(raw)} bytes, expected {numel} "
                    f"x {dtype.itemsize}"
                )
            arr = np.frombuffer(raw, dtype=dtype)
            self._storages[key] = arr.astype(arr.dtype.newbyteorder("="), copy=False)
        return self._storages[key]


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """A ``torch.save`` zip file's state dict as ``{key: np.ndarray}`` (see the module docstring)."""
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80":
            raise ValueError(
                f"{path}: a legacy (pre-1.6, non-zip) torch file, which is not read; re-save it "
                'in the zip format with torch >= 1.6: python -c "import torch; '
                f"torch.save(torch.load('{path}', weights_only=True), 'resaved.pth')\""
            )
        raise ValueError(f"{path}: not a torch.save zip file")
    with zipfile.ZipFile(path) as archive:
        pkls = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") <= 1]
        if len(pkls) != 1:
            raise ValueError(f"{path}: expected one <name>/data.pkl in the archive, found {pkls}")
        prefix = pkls[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in archive.namelist():
            byteorder = archive.read(f"{prefix}byteorder").decode().strip()
            if byteorder not in ("little", "big"):
                raise ValueError(f"{path}: unknown byteorder record {byteorder!r}")
        with archive.open(pkls[0]) as f:
            try:
                obj = _RestrictedUnpickler(f, archive, prefix, byteorder, path).load()
            except pickle.UnpicklingError as err:
                msg = str(err)
                raise ValueError(msg if msg.startswith(path) else f"{path}: {msg}") from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict, found {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, np.ndarray):
            raise ValueError(f"{path}: entry {k!r} is not a tensor ({type(v).__name__})")
        out[str(k)] = v
    return out


# ---------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """A ``.safetensors`` file as ``{key: np.ndarray}`` (see the module docstring)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    n = int.from_bytes(blob[:8], "little")
    if n > len(blob) - 8:
        raise ValueError(f"{path}: header length {n} exceeds the file ({len(blob)} bytes)")
    try:
        header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: the safetensors header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header is not a JSON object")
    data = memoryview(blob)[8 + n :]
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = _np_dtype(_SAFETENSORS_DTYPES[info["dtype"]])
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: bad header entry for {key!r}: {str(info)[:120]}") from None
        count = int(np.prod(shape, dtype=np.int64))
        if not 0 <= begin <= end <= len(data) or end - begin != count * dtype.itemsize:
            raise ValueError(
                f"{path}: {key!r} data_offsets {[begin, end]} do not hold {info['dtype']} "
                f"{list(shape)} within the {len(data)} data bytes"
            )
        out[key] = np.frombuffer(data[begin:end], dtype=dtype.newbyteorder("<")).reshape(shape)
        out[key] = out[key].astype(dtype, copy=True)
    return out


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """``.safetensors`` -> `read_safetensors`; ``.pth`` / ``.pt`` / ``.bin`` -> `read_torch_state_dict`."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    if path.endswith((".pth", ".pt", ".bin")):
        return read_torch_state_dict(path)
    raise ValueError(f"{path}: expected a .pth / .pt (torch.save) or .safetensors file")


# ---------------------------------------------------------------------------------
# torchvision names -> ResNet
# ---------------------------------------------------------------------------------

_BN_PARAMS = {"scale": "weight", "bias": "bias"}
_BN_STATS = {"mean": "running_mean", "var": "running_var"}
_BLOCK = re.compile(r"res([2-5])_block(\d+)$")
_CONV_BN = re.compile(r"conv_bn([1-3])$")


def torchvision_key(path: Sequence[str], collection: str = "params") -> str | None:
    """The torchvision key of a ResNet variable (``path`` inside the ResNet's subtree of
    ``collection`` "params" or "batch_stats"), or None when it has none."""
    names = _BN_PARAMS if collection == "params" else _BN_STATS
    path = tuple(path)
    if collection == "params" and path in (("fc", "kernel"), ("fc", "bias")):
        return "fc.weight" if path[1] == "kernel" else "fc.bias"
    if len(path) == 3 and path[0] == "stem":
        conv, bn = "conv1", "bn1"
        rest = path[1:]
    elif len(path) == 4 and _BLOCK.match(path[0]):
        m = _BLOCK.match(path[0])
        layer = f"layer{int(m.group(1)) - 1}.{int(m.group(2))}"
        if path[1] == "downsample":
            conv, bn = f"{layer}.downsample.0", f"{layer}.downsample.1"
        elif _CONV_BN.match(path[1]):
            i = _CONV_BN.match(path[1]).group(1)
            conv, bn = f"{layer}.conv{i}", f"{layer}.bn{i}"
        else:
            return None
        rest = path[2:]
    else:
        return None
    if rest == ("conv", "kernel") and collection == "params":
        return f"{conv}.weight"
    if rest[0] == "bn" and rest[1] in names:
        return f"{bn}.{names[rest[1]]}"
    return None


def _to_flax(key: str, value: np.ndarray) -> np.ndarray:
    """torch layout -> flax layout: conv OIHW -> HWIO, Linear [out, in] -> [in, out]."""
    if key.endswith(".weight") and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if key == "fc.weight" and value.ndim == 2:
        return value.T
    return value


def _torch_shape(key: str, flax_shape: tuple) -> tuple:
    """The torch shape that would convert to ``flax_shape`` (for error messages)."""
    if key.endswith(".weight") and len(flax_shape) == 4:
        h, w, i, o = flax_shape
        return (o, i, h, w)
    if key == "fc.weight" and len(flax_shape) == 2:
        return tuple(reversed(flax_shape))
    return tuple(flax_shape)


def _flatten(tree, prefix=()) -> dict[tuple, Any]:
    out = {}
    for k, v in tree.items():
        if hasattr(v, "items"):
            out.update(_flatten(v, prefix + (str(k),)))
        else:
            out[prefix + (str(k),)] = v
    return out


def _unflatten_like(tree, flat: Mapping[tuple, Any], prefix=()):
    return {
        k: _unflatten_like(v, flat, prefix + (str(k),))
        if hasattr(v, "items")
        else flat[prefix + (str(k),)]
        for k, v in tree.items()
    }


def convert_torchvision_resnet(
    state_dict: Mapping[str, np.ndarray], params_template, stats_template, *, source: str = ""
):
    """``(params, batch_stats)`` of a `ResNet` from a torchvision state dict.

    ``params_template`` / ``stats_template`` are the ResNet's own subtrees (arrays or
    ShapeDtypeStructs; only shapes and dtypes are read); the result has their structure
    with NumPy leaves in their dtypes. Raises a ValueError naming every key that does
    not fit (see the module docstring); ``source`` (e.g. the file) starts the message.
    """
    missing, unmapped, mismatched, bad_values = [], [], [], []
    used = set()
    results = {}
    for collection, template in (("params", params_template), ("batch_stats", stats_template)):
        flat = _flatten(template)
        converted = {}
        for path, ref in flat.items():
            where = "/".join(path) + ("" if collection == "params" else " (batch_stats)")
            key = torchvision_key(path, collection)
            if key is None:
                unmapped.append(where)
                continue
            if key not in state_dict:
                missing.append(f"{key} (for {where})")
                continue
            used.add(key)
            value = np.asarray(state_dict[key])
            new = _to_flax(key, value)
            if tuple(new.shape) != tuple(ref.shape):
                hint = ""
                if key == "conv1.weight" and tuple(ref.shape[:2]) == (3, 3):
                    hint = "; torchvision's 7x7 conv1 needs the 'imagenet' stem, not 'small'"
                mismatched.append(
                    f"{key} {list(value.shape)} vs {where} expecting "
                    f"{list(_torch_shape(key, tuple(ref.shape)))}{hint}"
                )
                continue
            if not np.issubdtype(value.dtype, np.floating) and value.dtype.name != "bfloat16":
                bad_values.append(f"{key} has dtype {value.dtype}")
                continue
            new = np.asarray(new, dtype=np.dtype(ref.dtype))
            if not np.all(np.isfinite(new)):
                bad_values.append(f"{key} holds non-finite values")
                continue
            converted[path] = np.ascontiguousarray(new)
        results[collection] = (template, converted)
    has_fc = any(p[0] == "fc" for p in _flatten(params_template))
    unused = sorted(
        k
        for k in state_dict
        if k not in used
        and not k.endswith("num_batches_tracked")
        and not (k.startswith("fc.") and not has_fc)
    )
    parts = []
    if missing:
        parts.append("missing in the file: " + ", ".join(missing))
    if unmapped:
        parts.append("model entries with no torchvision counterpart: " + ", ".join(unmapped))
    if mismatched:
        parts.append("shape mismatches: " + "; ".join(mismatched))
    if bad_values:
        parts.append("bad values: " + ", ".join(bad_values))
    if unused:
        parts.append("keys of the file the model does not use: " + ", ".join(unused))
    if parts:
        head = f"{source}: " if source else ""
        raise ValueError(
            f"{head}the torchvision ResNet state dict does not fit the model: " + " | ".join(parts)
        )
    params = _unflatten_like(params_template, results["params"][1])
    stats = _unflatten_like(stats_template, results["batch_stats"][1])
    return params, stats


def _subtree(tree, path: Sequence[str], what: str):
    node = tree
    for i, k in enumerate(path):
        if not hasattr(node, "items") or k not in node:
            raise ValueError(f"{what} has no entry {'/'.join(path[: i + 1])}")
        node = node[k]
    return node


def _replace(tree, path: Sequence[str], new):
    if not path:
        return new
    out = dict(tree)
    out[path[0]] = _replace(tree[path[0]], path[1:], new)
    return out


def load_backbone(params, model_state, subtree: Sequence[str], path: str, *, field: str):
    """``(params, model_state)`` with the torchvision ResNet weights of the file ``path``
    in the backbone at ``subtree`` of params and of ``model_state["batch_stats"]``.

    The rest of both trees is returned as it was; the new leaves are NumPy arrays. A
    missing file is a FileNotFoundError naming ``field`` (the config field) and the path.
    """
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{field}={path!r}: no such file. Download the torchvision ResNet weights "
            f"(e.g. resnet50-0676ba61.pth) to that path (the default directory is "
            f"${WEIGHTS_ENV} or {DEFAULT_WEIGHTS_DIR}), or set --{field}= to train from scratch"
        )
    state_dict = read_state_dict(path)
    subtree = tuple(subtree)
    stats_root = model_state.get("batch_stats", {}) if hasattr(model_state, "get") else {}
    p_template = _subtree(params, subtree, "params")
    s_template = _subtree(stats_root, subtree, "model_state['batch_stats']")
    new_p, new_s = convert_torchvision_resnet(
        state_dict, p_template, s_template, source=f"{field}={path!r}"
    )
    params = _replace(params, subtree, new_p)
    model_state = dict(model_state)
    model_state["batch_stats"] = _replace(stats_root, subtree, new_s)
    return params, model_state
