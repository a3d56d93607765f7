"""Training throughput (images/s) at the cpu preset: this package's loop vs a naive reference.

    python benchmarks/train_throughput.py [--archs preact_resnet18 vgg19_bn] [--steps 20]

Rows: for each architecture, the in-memory loop (batch augmentation, channels-last) in bf16
autocast and in fp32, and a naive loop (torch DataLoader over a Dataset with torchvision
transforms per image, fp32, contiguous). Images are random uint8 tensors of CIFAR-10's shape;
throughput does not depend on pixel values. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from upgp.models import create_model
from upgp.presets import get_preset
from upgp.train import autocast, batches, random_crop_flip, to_float


def upgp_loop(arch: str, x: torch.Tensor, y: torch.Tensor, bf16: bool, steps: int,
              warmup: int, width: int, batch: int) -> float:
    model = create_model(arch, width=width).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    gen = torch.Generator().manual_seed(0)
    dev = torch.device("cpu")
    order = list(batches(len(x), batch, gen, drop_last=True))
    start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        idx = order[i % len(order)]
        xb = random_crop_flip(to_float(x[idx], dev), gen)
        with autocast(dev, bf16):
            loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - start)


class _Naive(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        from torchvision import transforms

        self.x, self.y = x, y
        self.tf = transforms.Compose([
            transforms.ToPILImage(), transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(), transforms.ToTensor()])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.tf(self.x[i]), self.y[i]


def naive_loop(arch: str, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int,
               width: int, batch: int) -> float:
    model = create_model(arch, width=width).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = DataLoader(_Naive(x, y), batch_size=batch, shuffle=True, num_workers=0,
                        drop_last=True)
    it = iter(loader)
    start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(loader)
            xb, yb = next(it)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["preact_resnet18", "vgg19_bn"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    preset = get_preset("cpu")
    torch.manual_seed(0)
    n = preset.batch_size * (args.steps + args.warmup)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,))
    print(f"# train throughput, preset cpu (width {preset.width}, batch {preset.batch_size}), "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print("| arch | loop | precision | img/s | vs naive |")
    print("|---|---|---|---|---|")
    for arch in args.archs:
        naive = naive_loop(arch, x, y, args.steps, args.warmup, preset.width, preset.batch_size)
        rows = [("upgp (in-memory, batch aug, channels-last)", "bf16",
                 upgp_loop(arch, x, y, True, args.steps, args.warmup, preset.width,
                           preset.batch_size)),
                ("upgp (in-memory, batch aug, channels-last)", "fp32",
                 upgp_loop(arch, x, y, False, args.steps, args.warmup, preset.width,
                           preset.batch_size)),
                ("naive (DataLoader + torchvision transforms)", "fp32", naive)]
        for loop, precision, ips in rows:
            print(f"| {arch} | {loop} | {precision} | {ips:,.0f} | {ips / naive:.2f}x |",
                  flush=True)


if __name__ == "__main__":
    main()
