"""The problems ``fastconv bench``, ``fastconv report`` and the asv suite time.

A :class:`Case` is one convolution problem (operation, shapes, geometry, dtype, kind of kernel);
the built-in suites (:func:`suite_cases`) draw on the canonical layer shapes shipped with the
package (``fastconv/data/shapes.json``: ResNet-50, VGG, MobileNetV2, DeepLabV3, DCGAN...) and on
single-channel image filters; :func:`make_inputs` makes their data from a fixed seed.

Examples
--------
>>> [case.name for case in canonical_layers()][:2]
['resnet50_conv1', 'resnet50_3x3_56']
>>> len(suite_cases("cnn")) == len(canonical_layers()) + len(EXTRA_CNN_LAYERS)
True
"""

from __future__ import annotations

import dataclasses
import functools
import json
from importlib import resources

import numpy as np

from fastconv.geometry import make_spec

__all__ = ["Case", "EXTRA_CNN_LAYERS", "KERNELS", "Skip", "SUITES", "OPS", "PASS_OPS", "PASSES", "call_overhead_case",
           "canonical_layers", "image_filter", "make_inputs", "make_grad_output", "pass_cases", "shapes", "suite_cases"]

SUITES = ("default", "cnn", "image", "depthwise", "transposed", "calls", "all")

#: The backward passes of conv2d, as operations a case can time (their geometry is conv2d's).
PASS_OPS = ("conv2d_input", "conv2d_weight")

OPS = ("conv2d", "conv_transpose2d", *PASS_OPS)

#: Kinds of kernel a case's weight can be (see :func:`make_inputs`).
KERNELS = ("random", "gaussian")


class Skip(Exception):
    """A backend or peer cannot run a case; the message says why."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One problem to time: an operation, its shapes and geometry, the dtype and the kernel kind.

    ``kernel`` is ``"random"`` (a full-rank kernel) or ``"gaussian"`` (a separable, rank-1 kernel:
    the outer product of two 1-D Gaussians). ``group`` labels the sweep a case belongs to (the
    report's plots select cases by it).
    """

    name: str
    input_shape: tuple
    weight_shape: tuple
    stride: object = 1
    padding: object = 0
    dilation: object = 1
    groups: int = 1
    padding_mode: str = "zeros"
    op: str = "conv2d"
    output_padding: object = 0
    kernel: str = "random"
    dtype: str = "float32"
    group: str = ""

    def conv_kwargs(self) -> dict:
        """The keyword arguments of the fastconv call (``fastconv.<op>(x, w, **kwargs)``)."""
        kwargs = dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)
        if self.op == "conv_transpose2d":
            kwargs["output_padding"] = self.output_padding
        elif self.padding_mode != "zeros":
            kwargs["padding_mode"] = self.padding_mode
        return kwargs

    def spec(self):
        """The :class:`~fastconv.geometry.ConvSpec` of a conv2d case, or of the conv2d whose
        backward pass a ``conv2d_input`` / ``conv2d_weight`` case is (validates it)."""
        if self.op not in ("conv2d", *PASS_OPS):
            raise ValueError(f"case {self.name!r} is a {self.op}, not a conv2d")
        return make_spec(self.input_shape, self.weight_shape, dtype=np.dtype(self.dtype), **self.conv_kwargs())

    def backend_spec(self):
        """The spec a conv2d backend receives (other padding modes are materialised before it)."""
        spec = self.spec()
        return spec if spec.padding_mode == "zeros" else spec.zero_padded()

    @property
    def flops(self) -> int:
        """Flops of the direct algorithm: one multiply and one add per tap (GFLOP/s uses these)."""
        if self.op in ("conv2d", *PASS_OPS):  # each pass does the forward's multiply-adds
            return self.spec().flops
        # transposed: every input value is scattered through (K / groups) * kh * kw taps
        _, out_per_group, kernel_h, kernel_w = self.weight_shape
        return 2 * int(np.prod(self.input_shape)) * out_per_group * kernel_h * kernel_w

    def describe(self) -> str:
        """One line: op, shapes and the geometry that differs from the defaults."""
        shape = "x".join
        parts = [f"{self.op} input {shape(map(str, self.input_shape))} {self.dtype}",
                 f"weight {shape(map(str, self.weight_shape))}" + (" (gaussian)" if self.kernel == "gaussian" else "")]
        for field in ("stride", "padding", "dilation", "groups", "padding_mode", "output_padding"):
            value = getattr(self, field)
            default = Case.__dataclass_fields__[field].default
            if value != default:
                parts.append(f"{field} {value}")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Case":
        def as_tuple(value):  # JSON turns tuples into lists; Case must stay hashable
            return tuple(as_tuple(v) for v in value) if isinstance(value, list) else value

        return cls(**{key: as_tuple(value) for key, value in data.items()})


# --------------------------------------------------------------------------------------------
# the built-in suites


@functools.lru_cache(maxsize=1)
def shapes() -> dict:
    """The canonical layer shapes shipped with the package (``fastconv/data/shapes.json``)."""
    # A copy of the canonical shapes shipped with the package, so that an installed fastconv needs
    # nothing beside it (the source and what each field means are in the file's "about").
    return json.loads(resources.files("fastconv").joinpath("data", "shapes.json").read_text())


def canonical_layers(op: str = "conv2d") -> list[Case]:
    """The canonical CNN layers (ResNet-50, VGG, MobileNetV2, DeepLabV3, DCGAN...) as cases.

    >>> [case.name for case in canonical_layers()][:2]
    ['resnet50_conv1', 'resnet50_3x3_56']
    """
    cases = []
    for layer in shapes()[op]:
        input_shape = (layer["N"], layer["C"], layer["H"], layer["W"])
        if op == "conv2d":
            weight_shape = (layer["K"], layer["C"] // layer["groups"], layer["R"], layer["S"])
        else:  # torch's transposed weight layout: (C_in, K // groups, kh, kw)
            weight_shape = (layer["C"], layer["K"] // layer["groups"], layer["R"], layer["S"])
        extra = {"output_padding": layer["output_padding"]} if op == "conv_transpose2d" else {}
        cases.append(Case(layer["name"], input_shape, weight_shape, stride=layer["stride"], padding=layer["pad"],
                          dilation=layer["dilation"], groups=layer["groups"], op=op, group="layers", **extra))
    return cases


def image_filter(side: int, kernel_side: int, kernel: str = "random", group: str = "image", planes: int = 1) -> Case:
    """Filtering of a ``side`` × ``side`` image, padding ``"same"``.

    ``planes`` > 1: an image of that many channels (a colour image) filtered channel by channel
    with one kernel, as OpenCV filters an H×W×3 image; to fastconv, a batch of ``planes``
    single-channel images (input ``(planes, 1, side, side)``, weight ``(1, 1, k, k)``).
    """
    shape = f"{side}x{side}" + (f"x{planes}" if planes > 1 else "")
    return Case(f"image {shape}, {kernel} {kernel_side}x{kernel_side}", (planes, 1, side, side),
                (1, 1, kernel_side, kernel_side), padding="same", kernel=kernel, group=group)


def call_overhead_case() -> Case:
    """A problem so small that a call's time is its overhead: validation, the choice, dispatch.

    >>> call_overhead_case().describe()
    'conv2d input 1x1x8x8 float32, weight 1x1x3x3'
    """
    return Case("per-call overhead: 1x1x8x8, 3x3", (1, 1, 8, 8), (1, 1, 3, 3), group="calls")


def _by_name(names, op="conv2d") -> list[Case]:
    layers = {case.name: case for case in canonical_layers(op)}
    return [layers[name] for name in names]


#: Layer kinds the canonical shapes lack: grouped convolution with few channels per group and a
#: strided 3x3 (ResNeXt-50 32x4d stage 3; ResNet-50 v1.5 stage 3's first block).
EXTRA_CNN_LAYERS = (
    Case("resnext50_3x3_g32_28", (1, 256, 28, 28), (256, 8, 3, 3), padding=1, groups=32, group="layers"),
    Case("resnet50_3x3_s2", (1, 128, 56, 56), (128, 128, 3, 3), stride=2, padding=1, group="layers"),
)


def _depthwise_cases() -> list[Case]:
    return _by_name(["mobilenetv2_dw_56", "mobilenetv2_dw_s2"]) + [
        Case("depthwise 5x5, 96ch 56x56", (1, 96, 56, 56), (96, 1, 5, 5), padding=2, groups=96),
        Case("efficientnet_b0_dw5x5_28, batch 4", (4, 240, 28, 28), (240, 1, 5, 5), padding=2, groups=240),
        Case("depthwise x2 multiplier 3x3, 32ch 112x112", (1, 32, 112, 112), (64, 1, 3, 3), padding=1, groups=32),
        Case("grouped 3x3, 128ch 28x28, 8 groups", (1, 128, 28, 28), (128, 16, 3, 3), padding=1, groups=8),
    ]


def _transposed_cases() -> list[Case]:
    return canonical_layers("conv_transpose2d") + [
        Case("upsample x2 3x3, 64ch 32x32", (1, 64, 32, 32), (64, 32, 3, 3), stride=2, padding=1,
             output_padding=1, op="conv_transpose2d"),
    ]


def _full_suite(name: str) -> list[Case]:
    if name == "default":
        return (
            _by_name(["resnet50_3x3_56", "mobilenetv2_pw", "resnet50_conv1", "mobilenetv2_dw_56",
                      "deeplabv3_aspp_d12"])
            + [image_filter(512, 9), image_filter(512, 9, "gaussian"), image_filter(1024, 31)]
            + canonical_layers("conv_transpose2d")
        )
    if name == "cnn":
        return canonical_layers() + list(EXTRA_CNN_LAYERS)
    if name == "image":
        return ([image_filter(side, k, kind) for side in (256, 1024, 2048) for k in (3, 9, 31)
                 for kind in ("random", "gaussian")]
                + [image_filter(2048, k, kind, planes=3) for k, kind in ((5, "random"), (31, "gaussian"))])
    if name == "depthwise":
        return _depthwise_cases()
    if name == "transposed":
        return _transposed_cases()
    if name == "calls":
        return [call_overhead_case()]
    raise ValueError(f"unknown suite {name!r}; choose one of {SUITES}")


def _quick_suite(name: str) -> list[Case]:
    # Tiny problems of each kind, for smoke tests: the whole suite runs in seconds.
    tiny = {
        "cnn": [Case("tiny 3x3, 8ch 16x16", (1, 8, 16, 16), (8, 8, 3, 3), padding=1),
                Case("tiny 1x1 stride 2, 8->16ch 16x16", (1, 8, 16, 16), (16, 8, 1, 1), stride=2)],
        "image": [image_filter(64, 5), image_filter(64, 5, "gaussian"), image_filter(64, 5, planes=3)],
        "depthwise": [Case("tiny depthwise 3x3, 8ch 16x16", (1, 8, 16, 16), (8, 1, 3, 3), padding=1, groups=8)],
        "transposed": [Case("tiny transposed 4x4 stride 2, 8ch 8x8", (1, 8, 8, 8), (8, 4, 4, 4), stride=2,
                            padding=1, op="conv_transpose2d")],
        "calls": [call_overhead_case()],
    }
    if name == "all":
        return [case for cases in tiny.values() for case in cases]
    if name == "default":
        return [case for suite, cases in tiny.items() if suite != "calls" for case in cases]
    return tiny[name]


def suite_cases(name: str = "default", quick: bool = False, dtype: str = "float32") -> list[Case]:
    """The cases of a built-in suite: ``default``, ``cnn``, ``image``, ``depthwise``, ``transposed``,
    ``calls`` (one tiny problem: the per-call overhead), ``all``.

    ``quick`` swaps in tiny problems of the same kinds (for smoke tests).

    >>> len(suite_cases("cnn")) == len(canonical_layers()) + len(EXTRA_CNN_LAYERS)
    True
    """
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose one of {SUITES}")
    if quick:
        cases = _quick_suite(name)
    elif name == "all":
        cases = [case for suite in SUITES[1:-1] for case in _full_suite(suite)]
    else:
        cases = _full_suite(name)
    return [dataclasses.replace(case, dtype=dtype) for case in cases]


#: The passes ``fastconv bench --pass`` times: the forward call, or one of conv2d's backward passes.
PASSES = {"forward": "conv2d", "input": "conv2d_input", "weight": "conv2d_weight"}


def pass_cases(cases, pass_: str) -> list[Case]:
    """``cases`` for timing pass ``pass_`` (a key of :data:`PASSES`): as they are for ``"forward"``,
    else their conv2d cases as that backward pass (other operations' cases are left out).

    >>> [case.op for case in pass_cases(suite_cases("cnn")[:1], "weight")]
    ['conv2d_weight']
    """
    if pass_ not in PASSES:
        raise ValueError(f"pass must be one of {tuple(PASSES)}, got {pass_!r}")
    if pass_ == "forward":
        return list(cases)
    return [dataclasses.replace(case, op=PASSES[pass_]) for case in cases if case.op == "conv2d"]


def make_grad_output(case: Case, seed: int = 1) -> np.ndarray:
    """A standard normal output gradient for a backward-pass case, from a fixed seed."""
    shape = case.spec().out_shape
    return np.random.default_rng(seed).standard_normal(shape).astype(np.dtype(case.dtype))


def make_inputs(case: Case, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Input and weight of ``case`` from a fixed seed: standard normal data; a Gaussian kernel is
    the outer product of two 1-D Gaussians (sigma = size / 6), scaled per filter."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(case.dtype)
    x = rng.standard_normal(case.input_shape).astype(dtype)
    if case.kernel == "gaussian":
        kernel_h, kernel_w = case.weight_shape[2:]
        profiles = []
        for size in (kernel_h, kernel_w):
            offsets = np.arange(size) - (size - 1) / 2
            profile = np.exp(-0.5 * (offsets / max(size / 6, 0.5)) ** 2)
            profiles.append(profile / profile.sum())
        scale = rng.standard_normal(case.weight_shape[:2])
        w = (scale[:, :, None, None] * np.outer(*profiles)).astype(dtype)
    elif case.kernel == "random":
        w = rng.standard_normal(case.weight_shape).astype(dtype)
    else:
        raise ValueError(f"kernel must be one of {KERNELS}, got {case.kernel!r}")
    return x, w


