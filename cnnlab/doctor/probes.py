"""Checks 2-4 on one batch: the initial loss against chance and the activations (vanishing, saturated, dead ReLU,
identical units) of one eval-mode forward pass; the gradient norms and the update / weight ratio of one training
step (forward, backward, optimizer step), whose time sets the budget of the training checks."""

from __future__ import annotations

import copy
import math
import time

import torch
from torch import nn

from cnnlab.doctor.checks import FAIL, OK, WARN, Check
from cnnlab.tasks.classification import main_output, predicted_classes

ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.Tanh, nn.Sigmoid)
UPDATE_BAND = (1e-4, 1e-2)  # the notes' update / weight ratio, about 1e-3
ADAPTIVE_HIGH = 5e-2  # Adam-like first steps move every weight by about lr: a wider upper bound


def initial_loss_check(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       num_classes: int, out: torch.Tensor | None = None) -> tuple[list[Check], dict]:
    """The loss before any step against the loss of a uniform prediction (ln C for cross-entropy). `out`: the
    model's eval-mode output on x when it was computed already (`activation_stats` returns it)."""
    if int(y.max()) >= num_classes or int(y.min()) < 0:
        return [Check("initial loss", FAIL, f"labels {int(y.min())}..{int(y.max())}", f"0..{num_classes - 1}",
                      "labels out of range: check the label column / class folders")], {}
    with torch.no_grad():
        if out is None:
            model.eval()
            out = model(x)
        out = main_output(out).float()
        loss = float(loss_fn(out, y))
        chance = float(loss_fn(torch.zeros_like(out), y))
    share = torch.bincount(predicted_classes(out), minlength=num_classes).max().item() / len(y)
    value = f"{loss:.3f} (logit std {out.std().item():.2f}, top class {share:.0%} of predictions)"
    expected = f"about {chance:.3f} (chance; up to 2.5x)"
    info = {"loss": loss, "chance": chance, "top_share": share}
    if not math.isfinite(loss):
        return [Check("initial loss", FAIL, value, expected, "the loss is not finite before training: check the "
                      "inputs and the init")], info
    rows = out.sum(1)
    if out.min() >= 0 and torch.allclose(rows, torch.ones_like(rows), atol=1e-3) and num_classes > 1:
        return [Check("initial loss", FAIL, value + "; outputs sum to 1", expected,
                      "the model outputs probabilities: a softmax inside the model before the loss (which applies "
                      "its own); return logits, remove the softmax layer")], info
    if loss > 4 * chance:
        return [Check("initial loss", FAIL, value, expected, "badly scaled head init (large logits): initialize the "
                      "last layer smaller (init=xavier / he, or zero its weights)")], info
    if not 0.5 * chance <= loss <= 2.5 * chance:  # He-init heads (seed_cnn on MNIST) start at about 2x chance
        return [Check("initial loss", WARN, value, expected, "initial loss off chance: check the head init, label "
                      "smoothing, class weights")], info
    return [Check("initial loss", OK, value, expected)], info


def activation_stats(model: nn.Module, x: torch.Tensor) -> tuple[list[dict], torch.Tensor]:
    """Per activation layer: mean, std, dead fraction of units (ReLU family), saturated fraction (tanh / sigmoid);
    and the model's output, so the initial-loss check needs no second forward pass."""
    stats: list[dict] = []
    hooks = []

    def hook(module, inputs, output, name):
        o = output.detach().float()
        units = o.transpose(0, 1).reshape(o.shape[1], -1) if o.dim() > 1 else o.view(1, -1)
        row = {"layer": name, "kind": type(module).__name__, "mean": o.mean().item(), "std": o.std().item(),
               "dead": (units.abs().amax(1) == 0).float().mean().item(), "saturated": 0.0}
        if isinstance(module, nn.Tanh):
            row["saturated"] = (o.abs() > 0.99).float().mean().item()
        elif isinstance(module, nn.Sigmoid):
            row["saturated"] = ((o < 0.01) | (o > 0.99)).float().mean().item()
        stats.append(row)

    for name, m in model.named_modules():
        if isinstance(m, ACTIVATIONS):
            hooks.append(m.register_forward_hook(lambda mod, i, o, n=name: hook(mod, i, o, n)))
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return stats, out


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def symmetric_layers(model: nn.Module) -> list[str]:
    """Layers whose output units all have the same weights (and bias): their gradients stay identical."""
    out = []
    for name, m in weight_layers(model):
        w = m.weight.detach().reshape(m.weight.shape[0], -1)
        same_bias = m.bias is None or (m.bias - m.bias[:1]).abs().max() == 0
        if w.shape[0] > 1 and (w - w[:1]).abs().max() == 0 and same_bias:
            out.append(name)
    return out


def init_checks(model: nn.Module, stats: list[dict]) -> tuple[list[Check], list[dict]]:
    """Symmetric units, and the activation statistics of one forward pass (`activation_stats`)."""
    checks = []
    sym = symmetric_layers(model)
    if sym:
        checks.append(Check("init: symmetry", FAIL, f"{len(sym)} layers with identical units ({', '.join(sym[:3])})",
                            "distinct units", "symmetric units (zero / constant init): symmetry never breaks, every "
                            "unit learns the same; use random init (init=he for ReLU, xavier for tanh)"))
    else:
        checks.append(Check("init: symmetry", OK, "all layers' units differ", "distinct units"))
    if not stats:
        return checks, stats
    first, last = stats[0]["std"], stats[-1]["std"]
    ratio = last / first if first > 0 else 0.0
    value = f"std {first:.2g} -> {last:.2g} over {len(stats)} layers"
    if ratio < 1e-2:
        checks.append(Check("init: activations", FAIL, value, "std about constant through the net",
                            "activations vanish towards zero in the deep layers (init too small, e.g. "
                            "normal:0.01): use init=he (ReLU) or xavier (tanh), or add batch norm"))
    elif ratio > 1e2:
        checks.append(Check("init: activations", FAIL, value, "std about constant through the net",
                            "activations explode through the net: the init is too large; use init=he / xavier"))
    else:
        checks.append(Check("init: activations", OK, value, "std about constant through the net"))
    checks += unit_checks(stats)
    return checks, stats


def unit_checks(stats: list[dict]) -> list[Check]:
    out = []
    sat = [s for s in stats if s["kind"] in ("Tanh", "Sigmoid")]
    if sat:
        worst = max(sat, key=lambda s: s["saturated"])
        value = f"{worst['saturated']:.0%} saturated in {worst['layer']}"
        if worst["saturated"] > 0.5:
            out.append(Check("init: saturation", FAIL, value, "under 10% of tanh / sigmoid outputs at +-1",
                             "saturated units pass no gradient: the init is too large for tanh / sigmoid (use "
                             "init=xavier), or use ReLU"))
        else:
            out.append(Check("init: saturation", OK if worst["saturated"] < 0.1 else WARN, value,
                             "under 10% of tanh / sigmoid outputs at +-1"))
    relu = [s for s in stats if s["kind"] in ("ReLU", "LeakyReLU")]
    if relu:
        dead = sum(s["dead"] for s in relu) / len(relu)
        worst = max(relu, key=lambda s: s["dead"])
        value = f"{dead:.0%} dead on average, {worst['dead']:.0%} in {worst['layer']}"
        status = FAIL if dead > 0.4 else WARN if worst["dead"] > 0.5 else OK
        out.append(Check("init: dead ReLUs", status, value, "under 40% never active (50% in any layer)",
                         "" if status == OK else "dead ReLUs come from a bad init or too large a learning rate: "
                         "init=he, a lower lr, or leaky_relu"))
    return out


def gradient_checks(model: nn.Module, loss_fn: nn.Module, optimizer_fn, x: torch.Tensor, y: torch.Tensor,
                    adaptive: bool) -> tuple[list[Check], list[dict], float]:
    """Per-layer gradient norms of one batch and the update / weight ratio after one optimizer step (on a copy);
    and the seconds a (second, warm) training step of len(x) images takes."""
    net = copy.deepcopy(model).train()
    params = [(n, p) for n, p in net.named_parameters() if p.requires_grad and p.dim() > 1]
    if not params:
        return [Check("gradients", FAIL, "no trainable weights", "trainable layers",
                      "every layer is frozen: unfreeze the head (or --strategy fine-tune)")], [], 0.0
    optimizer = optimizer_fn(net)
    optimizer.zero_grad(set_to_none=True)
    loss_fn(main_output(net(x)), y).backward()
    before = {n: p.detach().clone() for n, p in params}
    grads = {n: (p.grad.norm().item() if p.grad is not None else 0.0) for n, p in params}
    optimizer.step()
    rows = []
    for n, p in params:
        w = before[n].norm().item()
        rows.append({"layer": n, "grad_norm": grads[n], "weight_norm": w,
                     "update_ratio": (p.detach() - before[n]).norm().item() / w if w > 0 else float("nan")})
    t0 = time.perf_counter()  # a second step, warm (the first one pays for allocations): the budget's unit
    optimizer.zero_grad(set_to_none=True)
    loss_fn(main_output(net(x)), y).backward()
    optimizer.step()
    seconds = time.perf_counter() - t0
    return [grad_norm_check(rows), update_check(rows, adaptive)], rows, seconds


def grad_norm_check(rows: list[dict]) -> Check:
    norms = [r["grad_norm"] for r in rows]
    first, last = norms[0], norms[-1]
    value = f"{first:.2g} (first layer) .. {last:.2g} (last), max {max(norms):.2g}"
    expected = "first / last layer within 1e-3, none above 1e3"
    if not all(math.isfinite(v) for v in norms) or max(norms) > 1e3:
        return Check("gradients", FAIL, value, expected, "exploding gradients: lower the lr, --grad-clip 1, "
                     "a smaller init or batch norm")
    if max(norms) == 0:
        return Check("gradients", FAIL, value, expected, "no gradient reaches the weights (zero init, or every "
                     "unit dead): use random init")
    if last > 0 and first / last < 1e-3:
        return Check("gradients", FAIL, value, expected, "vanishing gradients towards the input (sigmoid / tanh "
                     "in a deep net saturate and kill gradients): use ReLU with init=he, batch norm, or fewer layers")
    return Check("gradients", OK, value, expected)


def update_check(rows: list[dict], adaptive: bool) -> Check:
    ratios = sorted(r["update_ratio"] for r in rows if math.isfinite(r["update_ratio"]))
    lo, hi = UPDATE_BAND[0], ADAPTIVE_HIGH if adaptive else UPDATE_BAND[1]
    expected = f"about 1e-3 ({lo:.0e}..{hi:.0e})"
    if not ratios:
        return Check("updates", FAIL, "no weight moved", expected, "zero weights: use random init")
    median = ratios[len(ratios) // 2]
    value = f"median {median:.1e} (range {ratios[0]:.1e}..{ratios[-1]:.1e})"
    if median > 0.3:
        return Check("updates", FAIL, value, expected, "each step rewrites the weights: the lr is far too high "
                     "(run cnnlab doctor's lr range test, or --lr find)")
    if median > hi:
        return Check("updates", WARN, value, expected, "updates large against the weights: lower the lr")
    if median < lo:
        return Check("updates", WARN, value, expected, "updates tiny against the weights: raise the lr")
    return Check("updates", OK, value, expected)
