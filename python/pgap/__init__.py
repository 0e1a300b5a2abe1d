"""pgap: zeroth-order optimizers built on the public pgap_kernels API.

MeZO(model, *, lr, eps=1e-3, weight_decay=0.0, seed=0, ...)       two-point ZO-SGD, 3 fused passes
PGAP(model, *, lr, eps=1e-3, rank=8, window=100, probes=10, ...)  projected gradient-aligned ZO
SubZero(model, *, lr, eps=1e-3, rank=8, window=100, ...)          random subspace (P-GAP's control)
MeZOGV(model, *, lr, eps=1e-3, num_probes=4, top_frac=0.5, ...)   guiding vector of M probes
MeZOGreedy(model, *, lr, eps=1e-3, num_probes=4, ...)             best of M probes
LDSD(model, *, lr, eps=1e-3, num_probes=5, sigma=1.0, lr_mu=None, base="sgd")  learned mean
AGZO(model, *, lr, eps=1e-3, rank=8, refresh=10, others="gaussian", ...)   activation subspaces
ZOOptimizer                                                        their base (a torch.optim.Optimizer)
save_optimizer(opt, path) / load_optimizer(opt, path)              safetensors checkpoints
MissingDependencyError                                             an optional module is missing
fnv1a32, name_keys, derive_seed                                    the key and seed contract
pgap_decay_rule (the default), mezo_decay_rule                     weight-decay rules (decay_filter=)

See docs/optimizers.md, docs/pgap.md and docs/guided.md.
"""
from ._deps import MissingDependencyError
from .agzo import AGZO
from .base import NonFiniteLossError, ZOOptimizer
from .checkpoint import load_optimizer, save_optimizer
from .guided import MeZOGreedy, MeZOGV
from .ldsd import LDSD
from .mezo import MeZO
from .params import mezo_decay_rule, pgap_decay_rule
from .pgap_optimizer import PGAP
from .subzero import SubZero
from .seeds import derive_seed, fnv1a32, name_keys

__version__ = "0.1.0"

__all__ = ["AGZO", "LDSD", "MeZO", "MeZOGV", "MeZOGreedy", "MissingDependencyError", "NonFiniteLossError",
           "PGAP", "ZOOptimizer", "derive_seed", "fnv1a32", "load_optimizer", "mezo_decay_rule",
           "name_keys", "pgap_decay_rule", "save_optimizer", "SubZero",
           "__version__"]
