"""An optimizer that makes the loss jump on purpose, to test the divergence rule.

No library optimizer produces a loss spike of a chosen length at a chosen
step, so this one does. It trains nothing. On step ``shock_at`` it adds
``shock`` to the first entry of the classifier's bias (the last parameter
tensor), which raises the cross-entropy of every image of another class by
about that much. After ``hold`` more steps it removes the shock again
(``hold=None`` keeps it for the rest of the run).
"""

import torch


class BiasShock(torch.optim.Optimizer):
    def __init__(self, params, lr=0.0, shock_at=1, hold=1, shock=1000.0):
        super().__init__(params, {"lr": lr})
        self.shock_at, self.hold, self.shock = shock_at, hold, shock
        self.calls = 0

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.calls += 1
        bias = self.param_groups[-1]["params"][-1]
        if self.calls == self.shock_at:
            bias[0] += self.shock
        elif self.hold is not None and self.calls == self.shock_at + self.hold:
            bias[0] -= self.shock
        return loss
