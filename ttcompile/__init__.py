"""ttcompile: ONNX-to-ONNX compression of Gemm/MatMul/Conv layers with tensor decompositions.

The Python API (``ttcompile.api``): ``inspect``, ``analyze``, ``plan``, ``compress``, ``finetune``, ``bench``."""

from ttcompile.analysis.lwiq import Analysis
from ttcompile.api import Finetuned, analyze, bench, compress, finetune, inspect, plan
from ttcompile.benchmark.bench import BenchReport
from ttcompile.errors import OptionError, UserError, VerificationError
from ttcompile.planning.budget import Budget, BudgetInfeasible
from ttcompile.planning.plan import Plan
from ttcompile.rewrite.compress import CompressPass
from ttcompile.rewrite.pipeline import Compressed, CompressReport

__version__ = "0.1.0"
__all__ = ["Analysis", "BenchReport", "Budget", "BudgetInfeasible", "CompressPass", "CompressReport", "Compressed",
           "Finetuned", "OptionError", "Plan", "UserError", "VerificationError", "analyze", "bench", "compress",
           "finetune", "inspect", "plan"]
