"""The DeepOBS test problems' networks: 2c2d (MNIST, Fashion-MNIST) and 3c3d (CIFAR-10).

Layer sizes follow DeepOBS (Schneider, Balles and Hennig, ICLR 2019) so that
results can be set beside the published ones.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class TwoConvTwoDense(nn.Module):
    """2c2d: two 5x5 'same' convolutions with max-pooling, then 1024 and 10 units.

    3,274,634 parameters for 28x28 greyscale input.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding=2)
        self.fc1 = nn.Linear(7 * 7 * 64, 1024)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


class ThreeConvThreeDense(nn.Module):
    """3c3d: three convolutions with 3x3/stride-2 max-pooling, then 512, 256, 10 units.

    895,210 parameters for 32x32 RGB input. TensorFlow's 'same' pooling pads
    only where needed (bottom and right); an explicit asymmetric pad with -inf
    reproduces it, giving feature maps of 28 -> 14, 12 -> 6 and 6 -> 3.
    """

    weight_decay = 0.002  # L2 on weights, not biases, as in DeepOBS

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=5)
        self.conv2 = nn.Conv2d(64, 96, kernel_size=3)
        self.conv3 = nn.Conv2d(96, 128, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(3 * 3 * 128, 512)
        self.fc2 = nn.Linear(512, 256)
        self.fc3 = nn.Linear(256, num_classes)

    @staticmethod
    def _pool_same(x: torch.Tensor) -> torch.Tensor:
        # Output size ceil(n / 2) with a 3x3 window: pad (n odd: 1, n even: 1 on
        # the far side only) with -inf so padding never wins the max.
        size = x.shape[-1]
        pad = max((-(-size // 2) - 1) * 2 + 3 - size, 0)
        x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2),
                  value=float("-inf"))
        return F.max_pool2d(x, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._pool_same(F.relu(self.conv1(x)))
        x = self._pool_same(F.relu(self.conv2(x)))
        x = self._pool_same(F.relu(self.conv3(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)

    def l2_penalty(self) -> torch.Tensor:
        """Return 0.5 * weight_decay * sum of squared weights (biases excluded)."""
        weights = [p for name, p in self.named_parameters() if name.endswith("weight")]
        return 0.5 * self.weight_decay * sum(w.pow(2).sum() for w in weights)


MODELS = {"2c2d": TwoConvTwoDense, "3c3d": ThreeConvThreeDense}
DATASET_MODEL = {"mnist": "2c2d", "fashion_mnist": "2c2d", "cifar10": "3c3d"}


def build_model(dataset: str, seed: int) -> nn.Module:
    """Build the dataset's DeepOBS network with weights drawn from ``seed``.

    The initial weights depend only on the seed, never on the optimizer, so
    runs of different optimizers at the same seed start from the same point.
    """
    architecture = DATASET_MODEL[dataset]
    in_channels = 3 if dataset == "cifar10" else 1
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = MODELS[architecture](in_channels=in_channels)
    torch.random.set_rng_state(generator_state)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
