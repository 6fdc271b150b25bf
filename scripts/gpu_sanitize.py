"""Every fusedgru CUDA kernel family at small odd sizes, for compute-sanitizer (memcheck,
racecheck, synccheck, initcheck) on a GPU; scripts/gpu_check.sh runs it under each tool.

Covers: the GRU forward and backward on the persistent kernels (FMA: fp32 strict and fp64;
tensor cores: bf16 and fp32 through TF32) and on the per-step path, one and both directions,
lengths, batch-first; GRUCell; LayerNormGRU; the causal conv forward, backward and streaming
update. Each result is checked against nn.GRU / F.conv1d (a kernel the sanitizer passes can still
compute the wrong thing). Sizes: T time steps, N batch, I input, H hidden (odd on purpose).

    python scripts/gpu_sanitize.py [--device cuda]
    compute-sanitizer --tool memcheck --error-exitcode 1 python scripts/gpu_sanitize.py
"""

import argparse
import contextlib
import os

import torch
import torch.nn.functional as F
from torch import nn

import fusedgru

T, N, I, H = 5, 3, 17, 130  # noqa: E741
TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 5e-2}


@contextlib.contextmanager
def path(value):
    """FUSEDGRU_PERSISTENT=value for the calls inside ("1" persistent, "0" per-step)."""
    saved = os.environ.get("FUSEDGRU_PERSISTENT")
    os.environ["FUSEDGRU_PERSISTENT"] = value
    try:
        yield
    finally:
        if saved is None:
            del os.environ["FUSEDGRU_PERSISTENT"]
        else:
            os.environ["FUSEDGRU_PERSISTENT"] = saved


def rel(a, b):
    """||a - b|| / ||b|| in float64 on the CPU (b may be a CPU reference)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check(name, got, want, dtype):
    err = rel(got, want)
    tol = TOL[torch.float32 if dtype == "tf32" else dtype] * (10 if dtype == "tf32" else 1)
    if not err <= tol:
        raise AssertionError(f"{name}: relative error {err:.3g} > {tol:.3g}")


def gru_case(device, dtype, tf32, bidirectional, lengths, batch_first):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    ref = nn.GRU(I, H, num_layers=2, bidirectional=bidirectional, batch_first=batch_first)
    ref = ref.to(device, dtype)
    ours = fusedgru.GRU(I, H, num_layers=2, bidirectional=bidirectional, batch_first=batch_first)
    ours.to(device, dtype).load_state_dict(ref.state_dict())
    D = 2 if bidirectional else 1
    shape = (N, T, I) if batch_first else (T, N, I)
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    h0 = torch.randn(2 * D, N, H, device=device, dtype=dtype, requires_grad=True)
    tag = "tf32" if tf32 else dtype
    if lengths:
        lens = torch.tensor([T, 2, 1][:N])
        seq = nn.utils.rnn.pack_padded_sequence(x, lens, batch_first=batch_first,
                                                enforce_sorted=False)
        want, want_h = ref(seq, h0)
        want = nn.utils.rnn.pad_packed_sequence(want, batch_first=batch_first, total_length=T)[0]
        got, got_h = ours(x, h0, lengths=lens.to(device))
    else:
        want, want_h = ref(x, h0)
        got, got_h = ours(x, h0)
    check("output", got, want, tag)
    check("h_n", got_h, want_h, tag)
    go, gh = torch.randn_like(want), torch.randn_like(want_h)
    params = [x, h0, *ref.parameters()]
    want_g = torch.autograd.grad((want * go).sum() + (want_h * gh).sum(), params)
    got_g = torch.autograd.grad((got * go).sum() + (got_h * gh).sum(), [x, h0, *ours.parameters()])
    for i, (g, w) in enumerate(zip(got_g, want_g)):
        check(f"gradient {i}", g, w, tag)


def cell_case(device, dtype):
    ref = nn.GRUCell(I, H).to(device, dtype)
    ours = fusedgru.GRUCell(I, H).to(device, dtype)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(N, I, device=device, dtype=dtype, requires_grad=True)
    h = torch.randn(N, H, device=device, dtype=dtype)
    want, got = ref(x, h), ours(x, h)
    check("cell", got, want, dtype)
    go = torch.randn_like(want)
    check("cell grad", torch.autograd.grad(got, x, go)[0], torch.autograd.grad(want, x, go)[0],
          dtype)


def ln_case(device, dtype):
    m = fusedgru.LayerNormGRU(I, H, num_layers=2, bidirectional=True).to(device, dtype)
    x = torch.randn(T, N, I, device=device, dtype=dtype, requires_grad=True)
    out, h = m(x)
    torch.autograd.grad(out.sum() + h.sum(), [x, *m.parameters()])
    cpu = fusedgru.LayerNormGRU(I, H, num_layers=2, bidirectional=True).double()
    cpu.load_state_dict(m.state_dict())
    check("LayerNormGRU", out, cpu(x.detach().cpu().double())[0], dtype)


def conv_case(device, dtype):
    C, L, W = 19, 37, 4
    x = torch.randn(N, C, L, device=device, dtype=dtype, requires_grad=True)
    w = torch.randn(C, W, device=device, dtype=dtype, requires_grad=True)
    b = torch.randn(C, device=device, dtype=dtype, requires_grad=True)
    for dilation in (1, 3):
        for xin in (x, x.transpose(1, 2).contiguous().transpose(1, 2)):  # NCL and channel-last
            got = fusedgru.causal_conv1d(xin, w, b, dilation=dilation, activation="silu")
            want = F.silu(F.conv1d(F.pad(xin, ((W - 1) * dilation, 0)), w.unsqueeze(1), b,
                                   dilation=dilation, groups=C))
            check("conv", got, want, dtype)
            go = torch.randn_like(want)
            for g, r in zip(torch.autograd.grad(got, [x, w, b], go),
                            torch.autograd.grad(want, [x, w, b], go)):
                check("conv grad", g, r, dtype)
    with torch.no_grad():
        state = torch.randn(N, C, W - 1, device=device, dtype=dtype)
        full = torch.cat([state, x[:, :, :4]], dim=2)
        want = F.conv1d(full, w.unsqueeze(1), b, groups=C)
        for t in range(4):
            y = fusedgru.causal_conv1d_update(x[:, :, t], state, w, b)
            check("conv update", y, want[:, :, t], dtype)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    torch.manual_seed(0)
    cases = 0
    for value in ("1", "0"):
        with path(value):
            for dtype, tf32 in ((torch.float32, False), (torch.float32, True),
                                (torch.bfloat16, False), (torch.float64, False)):
                for bidirectional, lengths, batch_first in ((False, False, False),
                                                            (True, True, True)):
                    gru_case(args.device, dtype, tf32, bidirectional, lengths, batch_first)
                    cases += 1
                    print(f"GRU {dtype} tf32={tf32} bidirectional={bidirectional} "
                          f"FUSEDGRU_PERSISTENT={value}: ok", flush=True)
            cell_case(args.device, torch.float32)
            cases += 1
    for dtype in (torch.float32, torch.bfloat16):
        ln_case(args.device, dtype)
        conv_case(args.device, dtype)
        cases += 2
        print(f"LayerNormGRU and causal conv {dtype}: ok", flush=True)
    if args.device == "cuda":
        torch.cuda.synchronize()
    print(f"gpu_sanitize: {cases} cases ran and matched their references")


if __name__ == "__main__":
    main()
