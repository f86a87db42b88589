"""Blocks: a model as a sequence of ``(params, h) -> h'`` maps, from NNX or plain pytrees.

A :class:`Block` is a pure function ``apply(params, h)`` and its initial ``params``
(any pytree). :func:`blocks_from_nnx` turns a list of Flax NNX modules (e.g. the
layers of an existing ``nnx.Sequential``) into blocks without rewriting the model:
each module is split into its ``nnx.Param`` leaves (a pure dict, an ordinary gradient
pytree) and everything else (kept static). Blocks must be pure in training (no
BatchNorm running statistics, no dropout RNG); that is what layer-local rules need.

:func:`chain_shapes` checks, at construction and outside ``jit``, that the blocks
compose on a given input shape and returns every block's output shape.

The small auxiliary networks the rules attach (classifier heads, decoders) are plain
pytrees built here (:func:`classifier_head`, :func:`decoder_head`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Block", "blocks_from_nnx", "chain_shapes", "fresh_copy", "classifier_head", "decoder_head"]

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Block:
    """One block of a model: ``apply(params, h) -> h'`` with initial ``params``.

    Example::

        def dense_relu(p, h):
            return jax.nn.relu(h @ p["w"] + p["b"])
        blk = Block(dense_relu, {"w": jnp.zeros((4, 8)), "b": jnp.zeros(8)}, name="fc1")
    """

    apply: Callable[[Any, jax.Array], jax.Array]
    params: Any
    name: str = ""


def blocks_from_nnx(modules: Sequence[Any]) -> list[Block]:
    """Wrap NNX modules (each ``module(h) -> h'``) as functional blocks.

    The block params are the modules' ``nnx.Param`` values as a pure dict; other
    variables are closed over unchanged. Pass ``list(model.layers)`` of an
    ``nnx.Sequential`` or any list of sub-modules.
    """
    from flax import nnx

    if isinstance(modules, nnx.Module) and hasattr(modules, "layers"):
        modules = list(modules.layers)
    modules = list(modules)
    if not modules:
        raise ValueError("modules must be a non-empty sequence of nnx.Module")
    out = []
    for k, m in enumerate(modules):
        if not isinstance(m, nnx.Module):
            raise ValueError(f"modules[{k}] must be an nnx.Module, got {type(m).__name__}")
        graphdef, params, rest = nnx.split(m, nnx.Param, ...)

        def apply(p, h, _g=graphdef, _r=rest):
            return nnx.merge(_g, p, _r)(h)

        out.append(Block(apply, nnx.to_pure_dict(params), name=f"{type(m).__name__}[{k}]"))
    return out


def _as_block(b: Any, k: int) -> Block:
    if isinstance(b, Block):
        return b
    if isinstance(b, tuple) and len(b) == 2 and callable(b[0]):
        return Block(b[0], b[1], name=f"block[{k}]")
    raise ValueError(f"blocks[{k}] must be a lgrad.local.Block or an (apply, params) pair, got {type(b).__name__}")


def as_blocks(blocks: Sequence[Any]) -> list[Block]:
    try:
        from flax import nnx

        if isinstance(blocks, nnx.Module) or (len(blocks) and isinstance(blocks[0], nnx.Module)):
            return blocks_from_nnx(blocks)
    except ImportError:  # pragma: no cover
        pass
    blocks = list(blocks)
    if not blocks:
        raise ValueError("blocks must be a non-empty sequence")
    return [_as_block(b, k) for k, b in enumerate(blocks)]


def _struct(shape: Shape, dtype=jnp.float32) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((2,) + tuple(shape), dtype)


def chain_shapes(blocks: Sequence[Block], input_shape: Shape, *, what: str = "blocks") -> list[Shape]:
    """Per-example output shape of every block on inputs of ``input_shape``.

    Raises ``ValueError`` naming the first block whose input does not fit (checked
    with ``jax.eval_shape``: nothing is computed).
    """
    shapes = []
    s = tuple(int(d) for d in input_shape)
    for k, b in enumerate(blocks):
        try:
            out = jax.eval_shape(b.apply, b.params, _struct(s))
        except Exception as e:  # noqa: BLE001 - any shape/type error of user code
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(
                f"{what} do not chain: {what}[{k}] ({b.name or 'unnamed'}) cannot take an input of per-example "
                f"shape {s}: {msg}"
            ) from None
        if not isinstance(out, jax.ShapeDtypeStruct) or out.shape[:1] != (2,):
            raise ValueError(f"{what}[{k}] ({b.name}) must map a batch to one array with the same leading batch axis")
        s = tuple(out.shape[1:])
        shapes.append(s)
    return shapes


def fresh_copy(key: jax.Array, params: Any) -> Any:
    """An independently drawn copy of *initial* params: every leaf's entries permuted.

    For i.i.d. initialisers (all standard Flax ones) a random permutation of a freshly
    initialised tensor has exactly the initialiser's distribution, so this gives a
    "fresh copy" of a layer without knowing its constructor (constant leaves such as
    zero biases stay constant).
    """
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    new = [jax.random.permutation(k, jnp.ravel(x)).reshape(jnp.shape(x)) for k, x in zip(keys, leaves)]
    return jax.tree.unflatten(tree, new)


# ---- small auxiliary nets (plain pytrees) ------------------------------------------
def _dense_init(key, din: int, dout: int) -> dict:
    return {"w": jax.random.normal(key, (din, dout)) / math.sqrt(din), "b": jnp.zeros((dout,))}


def _conv_init(key, cin: int, cout: int) -> dict:
    return {"w": jax.random.normal(key, (3, 3, cin, cout)) / math.sqrt(9 * cin), "b": jnp.zeros((cout,))}


def _conv(p, h):
    y = jax.lax.conv_general_dilated(h, p["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + p["b"]


def classifier_head(key, in_shape: Shape, num_classes: int, *, width: int = 32):
    """``(params, apply)``: a linear readout for vectors, the last step for sequences
    ``(T, F)``, and conv3x3-ReLU-global-average-pool-linear for feature maps (InfoPro's
    auxiliary classifier shape, scaled down)."""
    k1, k2 = jax.random.split(key)
    if len(in_shape) == 1:
        return _dense_init(k1, in_shape[0], num_classes), lambda p, h: h @ p["w"] + p["b"]
    if len(in_shape) == 2:
        return _dense_init(k1, in_shape[1], num_classes), lambda p, h: h[:, -1] @ p["w"] + p["b"]
    if len(in_shape) == 3:
        params = {"conv": _conv_init(k1, in_shape[-1], width), "fc": _dense_init(k2, width, num_classes)}

        def apply(p, h):
            z = jax.nn.relu(_conv(p["conv"], h)).mean(axis=(1, 2))
            return z @ p["fc"]["w"] + p["fc"]["b"]

        return params, apply
    raise ValueError(f"no auxiliary classifier for features of per-example shape {in_shape}")


def decoder_head(key, in_shape: Shape, out_shape: Shape):
    """``(params, apply)`` mapping features of ``in_shape`` to ``out_shape`` (logits or
    values): bilinear resize + conv3x3 between feature maps, a linear map otherwise."""
    if len(in_shape) == 3 and len(out_shape) == 3:
        params = _conv_init(key, in_shape[-1], out_shape[-1])

        def apply(p, h):
            if h.shape[1:3] != tuple(out_shape[:2]):
                h = jax.image.resize(h, (h.shape[0],) + tuple(out_shape[:2]) + (h.shape[-1],), "bilinear")
            return _conv(p, h)

        return params, apply
    din, dout = int(np.prod(in_shape)), int(np.prod(out_shape))
    params = _dense_init(key, din, dout)
    return params, lambda p, h: (h.reshape(h.shape[0], -1) @ p["w"] + p["b"]).reshape((h.shape[0],) + tuple(out_shape))
