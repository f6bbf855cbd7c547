"""Grad-CAM and Grad-CAM++ on a layer the trace chose (cnnlab.report.layers), feature maps, first-layer weights.

    trace = trace_model(model, x[:1])                   # cnnlab.report.layers
    cams = grad_cams(model, trace.target, x, classes)   # {"gradcam": (B, H, W), "gradcam++": (B, H, W)} in [0, 1]

The gradient is taken with respect to a copy of the target's output (the forward hook returns a clone), so in-place
activations after the target cannot change the stored activation, and the input requires grad, so frozen backbones
(feature extraction: no parameter requires grad) still produce gradients.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.report.layers import Call


def _on_call(model: nn.Module, call: Call, fn) -> torch.utils.hooks.RemovableHandle:
    """A forward hook that runs `fn(output)` on the `call.occurrence`-th call of the module `call.name` only."""
    count = [0]

    def hook(module: nn.Module, inputs, output):
        count[0] += 1
        return fn(output) if count[0] - 1 == call.occurrence else None

    return dict(model.named_modules())[call.name].register_forward_hook(hook)


def grad_cams(model: nn.Module, target: Call, x: torch.Tensor, classes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Grad-CAM and Grad-CAM++ maps (B, H, W) in [0, 1], at the input's size, for class `classes[i]` of image i.

    x is a preprocessed float batch; the model runs in eval mode, in fp32 (no autocast). The gradient is taken
    with respect to the target's output as it was (the hook hands a clone on, so in-place activations after the
    target cannot change it), and the input requires grad, so a frozen backbone (no parameter requires grad, as in
    feature extraction) still has gradients.
    """
    saved: dict[str, torch.Tensor] = {}

    def keep(output: torch.Tensor) -> torch.Tensor:
        out = output.clone()
        saved["act"] = output
        out.register_hook(lambda g: saved.__setitem__("grad", g))
        return out

    handle = _on_call(model, target, keep)
    model.eval()
    try:
        with torch.enable_grad():
            out = model(x.detach().float().requires_grad_(True))
            logits = out[0] if isinstance(out, (tuple, list)) else out
            logits.float().gather(1, classes.view(-1, 1).to(logits.device)).sum().backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    act, grad = saved["act"].detach().float(), saved["grad"].detach().float()
    size = tuple(x.shape[-2:])
    return {"gradcam": _upsample(_gradcam(act, grad), size), "gradcam++": _upsample(_gradcam_pp(act, grad), size)}


def _gradcam(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    weights = grad.mean(dim=(2, 3), keepdim=True)  # alpha_k: global-average-pooled gradients
    return torch.relu((weights * act).sum(1))


def _gradcam_pp(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Chattopadhyay et al. 2018, with exp(score) as the head (the closed form pytorch-grad-cam also uses)."""
    g2, g3 = grad.pow(2), grad.pow(3)
    denom = 2 * g2 + act.sum(dim=(2, 3), keepdim=True) * g3
    alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
    weights = (alpha * torch.relu(grad)).sum(dim=(2, 3), keepdim=True)
    return torch.relu((weights * act).sum(1))


def _upsample(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    cam = torch.nn.functional.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    flat = cam.flatten(1)
    lo, hi = flat.min(1).values.view(-1, 1, 1), flat.max(1).values.view(-1, 1, 1)
    return ((cam - lo) / (hi - lo).clamp_min(1e-12)).cpu()


def feature_maps(model: nn.Module, calls: list[Call], x: torch.Tensor) -> list[torch.Tensor]:
    """The outputs (C, H, W) of the given calls for one preprocessed image x (1, C, H, W), on the CPU."""
    out: dict[int, torch.Tensor] = {}
    handles = [_on_call(model, c, lambda o, k=k: out.__setitem__(k, o.detach().float()[0].cpu().clone()))
               for k, c in enumerate(calls)]
    model.eval()
    try:
        with torch.no_grad():
            model(x.float())
    finally:
        for h in handles:
            h.remove()
    return [out[k] for k in range(len(calls))]


def first_layer_weights(model: nn.Module, name: str | None) -> torch.Tensor | None:
    """The first layer's weight (out, in, kh, kw) for a Conv2d, (out, in) for a Linear; None without one."""
    if name is None:
        return None
    weight = getattr(dict(model.named_modules())[name], "weight", None)
    return None if weight is None else weight.detach().float().cpu()
