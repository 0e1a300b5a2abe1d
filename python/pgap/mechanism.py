"""The one interface through which an optimizer's step protocol (:class:`pgap.ZOOptimizer`) drives
what an optimizer attaches to the model: perturbed views (:class:`pgap.views.Views`), side paths
(:class:`pgap.side_paths.SidePath`), activation sketches (:class:`pgap.activation.ActivationSketcher`).
The base calls every attached mechanism at these points and knows nothing else of them; the
state hooks (:mod:`pgap.state`) save and load the pending updates a mechanism keeps."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch

RoundingFor = Callable[[str], Dict[str, Any]]  # a rounding pass's name -> the kernels' keyword arguments


class Mechanism:
    """Hooks on the model that an optimizer owns. Every method defaults to doing nothing."""

    def forward_checked(self) -> None:
        """After the first perturbed forward of a step: raise (the step then rolls back) if that
        forward did not see what the mechanism meant it to see."""

    def abort(self) -> None:
        """A step failed; its weights are back at θ. Drop what the step left in the mechanism."""

    def merge(self, rounding_for: RoundingFor) -> None:
        """Write pending updates kept outside the weights into them, rounded as
        ``rounding_for(pass name)`` says."""

    def pending_state(self) -> Dict[str, torch.Tensor]:
        """The pending updates :meth:`merge` would write, by state key (empty when none is
        pending); the optimizer's state carries them when it is taken unmerged."""
        return {}

    def pending_shapes(self) -> Dict[str, Tuple[int, ...]]:
        """Every key :meth:`pending_state` may hold, with its shape."""
        return {}

    def load_pending_state(self, tensors: Dict[str, torch.Tensor]) -> None:
        """Replace the pending updates with ``tensors`` (checked against :meth:`pending_shapes`;
        a key left out: nothing pending there)."""

    def set_token_mask(self, mask: Optional[torch.Tensor]) -> None:
        """The (batch, seq) attention mask of the next step's batch (None: every token counts)."""

    def close(self) -> None:
        """Remove the hooks (pending updates were merged before)."""
