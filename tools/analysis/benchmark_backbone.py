"""Plain ResNet against MRLA-light and MRLA-base ResNet, side by side.

All variants run in one process on the same input, interleaved repeat by
repeat so that a change of machine load hits them alike; the table gives
the median time of each and its ratio to the plain ResNet, for inference
(eval mode, no grad) and a training step (forward, backward, SGD step).
With ``--memory`` the table adds two memory figures of a training step,
both exact and independent of the allocator, unlike the process's
resident set:

- *saved*: the tensor memory live at the end of the forward pass, above
  what was live before it: what autograd holds for the backward pass
  (whatever saves it, saved-tensor hooks included) and the output;
- *peak*: the most tensor memory live at any moment of the forward and
  backward pass, above what was live before it (the model); both from the
  allocation events of ``torch.profiler`` (``profile_memory``): the saved
  tensors plus the transient ones, such as an MRLA-base stage's value
  maps while its forward runs, and the gradients.

With ``--ops`` it adds the number of ATen operator calls of a training
forward and backward (views and the gradients' accumulation included):
each is a trip through the dispatcher, and on a GPU most are a kernel
launch, so where the GPU outruns the host (small or fast steps) the step
time follows this count rather than the bytes moved.

Example::

    python tools/analysis/benchmark_backbone.py --batch 8 --size 224 \\
        --threads 2 --channels-last
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

VARIANTS = ('plain', 'light', 'base', 'light-pytorch', 'base-pytorch',
            'base-keep', 'light-compiled', 'base-compiled', 'light-slim',
            'base-slim')
# The backbones as MRLAResNet builds them by default.
DEFAULT_VARIANTS = ('plain', 'light', 'base-slim')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--depth', type=int, default=50, choices=(50, 101, 152))
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    p.add_argument('--amp', choices=('bf16', 'fp16'),
                   help='run under autocast in this dtype')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--variants', nargs='+', default=list(DEFAULT_VARIANTS),
                   choices=VARIANTS,
                   help='"-pytorch" variants force the pure-PyTorch path '
                   'of the MRLA ops, "-compiled" ones the compiled ops '
                   '(also where "auto" prefers PyTorch); "base-keep" is '
                   'MRLA-base with recompute_values=False; "-slim" ones '
                   'recompute MRLA\'s input (mrla_recompute_input=True, '
                   'MRLA-base\'s default), the others store it (False). '
                   'Default: the backbones as built by default, '
                   f'{" ".join(DEFAULT_VARIANTS)}')
    p.add_argument('--modes', nargs='+', default=['infer', 'train'],
                   choices=('infer', 'train'))
    p.add_argument('--memory', action='store_true',
                   help='also measure the saved and the peak tensor memory '
                   'of a training step')
    p.add_argument('--compile',
                   choices=('default', 'reduce-overhead', 'max-autotune'),
                   help='time the models under torch.compile in this mode '
                   '(MRLA then runs its PyTorch composition, which the '
                   'compiler fuses; memory and ops stay eager)')
    p.add_argument('--ops', action='store_true',
                   help='also count the ATen operator calls of a training '
                   'forward and backward')
    p.add_argument('--profile', type=int, metavar='N',
                   help='also profile one training step of each variant '
                   'and print its N most expensive ops (device time on a '
                   'GPU, host time on the CPU) and its kernel launches')
    p.add_argument('--json', help='write the results to this file')
    return p.parse_args(argv)


def build(variant, depth):
    """The backbone of a variant (mmdet ResNet / MRLAResNet)."""
    from mrla_mm.models import MRLAResNet
    kind = variant.split('-')[0]
    cfg = dict(light=dict(type='MRLALight'), base=dict(type='MRLABase'),
               plain=None)[kind]
    if variant == 'base-keep':
        # Keeps the value maps for the backward instead of recomputing
        # them (faster step, more memory).
        cfg = dict(cfg, recompute_values=False)
    # MRLA-base ResNets have the deep stem in the reference.
    return MRLAResNet(depth, mrla_cfg=cfg, deep_stem=kind == 'base',
                      out_indices=(3, ), norm_eval=False,
                      mrla_recompute_input=variant.endswith('-slim'))


class Runner:
    """One variant: its model, optimizer and the backend it runs with."""

    def __init__(self, variant, args):
        self.variant = variant
        self.backend = dict(pytorch='pytorch', compiled='compiled').get(
            variant.split('-')[-1], 'auto')
        torch.manual_seed(0)
        self.model = build(variant, args.depth)
        fmt = (torch.channels_last
               if args.channels_last else torch.contiguous_format)
        self.model = self.model.to(args.device, memory_format=fmt)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-4)
        # The timed calls go through the compiled module, if any; it shares
        # the model's parameters and its train/eval switch.
        self.step_model = self.model if args.compile is None else (
            torch.compile(
                self.model,
                mode=None if args.compile == 'default' else args.compile))
        self.autocast = torch.autocast(
            torch.device(args.device).type,
            dtype=dict(bf16=torch.bfloat16, fp16=torch.float16).get(args.amp),
            enabled=args.amp is not None)

    def __enter__(self):
        os.environ['MRLA_OPS_BACKEND'] = self.backend
        self.autocast.__enter__()

    def __exit__(self, *exc):
        self.autocast.__exit__(*exc)
        os.environ.pop('MRLA_OPS_BACKEND', None)

    def infer(self, x):
        self.model.eval()
        with self, torch.no_grad():
            self.step_model(x)

    def train(self, x):
        self.model.train()
        with self:
            self.opt.zero_grad(set_to_none=True)
            out = self.step_model(x)
            sum(o.float().mean() for o in out).backward()
            self.opt.step()


def make_input(args):
    x = torch.randn(args.batch, 3, args.size, args.size,
                    generator=torch.Generator().manual_seed(0))
    return x.to(args.device).contiguous(
        memory_format=torch.channels_last
        if args.channels_last else torch.contiguous_format)


def synchronize(args):
    """Wait for queued GPU work, so that a time covers it."""
    if torch.device(args.device).type == 'cuda':
        torch.cuda.synchronize(args.device)


def time_variants(args):
    if args.compile is not None:
        # One graph per variant and mode, all on the same forward code:
        # more than dynamo's default number of graphs per code object.
        torch._dynamo.config.recompile_limit = max(
            torch._dynamo.config.recompile_limit, 2 * len(args.variants))
    x = make_input(args)
    runners = [Runner(v, args) for v in args.variants]
    results = {}
    for mode in args.modes:
        times = {r.variant: [] for r in runners}
        for i in range(args.warmup + args.repeats):
            for r in runners:
                synchronize(args)
                t0 = time.perf_counter()
                getattr(r, mode)(x)
                synchronize(args)
                if i >= args.warmup:
                    times[r.variant].append(time.perf_counter() - t0)
        results[mode] = {v: statistics.median(t) for v, t in times.items()}
    return results


def eager_training_pass(args, variant, context):
    """One training forward and backward of a fresh model of ``variant``
    (eager, no optimizer step) inside ``context``."""
    r = Runner(variant, args)
    r.model.train()
    x = make_input(args)
    with r, context:
        sum(o.float().mean() for o in r.model(x)).backward()


def step_memory_mib(args, variant):
    """MiB of tensor memory live at the end of one training forward (what
    it leaves for the backward) and the most live at any moment of the
    forward and backward, both above what was live before them."""
    from torch.profiler import ProfilerActivity, profile, record_function
    r = Runner(variant, args)
    r.model.train()
    x = make_input(args)
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with r, prof:
        with record_function('forward'):
            out = r.model(x)
        sum(o.float().mean() for o in out).backward()
    events = list(prof.profiler.kineto_results.events())
    forward = next(e for e in events if e.name() == 'forward')
    forward_end = forward.start_ns() + forward.duration_ns()
    live = peak = held = 0
    for start, nbytes in sorted((e.start_ns(), e.nbytes()) for e in events
                                if e.name() == '[memory]'):
        live += nbytes
        peak = max(peak, live)
        if start <= forward_end:
            held = live
    return held / 2**20, peak / 2**20


class OpCounter(TorchDispatchMode):
    """Counts the ATen operator calls below autograd."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def step_op_calls(args, variant):
    """ATen operator calls of one training forward and backward."""
    counter = OpCounter()
    eager_training_pass(args, variant, counter)
    return counter.calls


def profile_step(args, variant, top):
    """Print the ``top`` ops of one training step of ``variant`` by their
    own time (device time on a GPU), from ``torch.profiler``, after two
    warm-up steps."""
    from torch.profiler import ProfilerActivity, profile
    cuda = torch.device(args.device).type == 'cuda'
    r = Runner(variant, args)
    x = make_input(args)
    for _ in range(2):
        r.train(x)
    synchronize(args)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                           if cuda else [])
    with profile(activities=activities) as prof:
        r.train(x)
        synchronize(args)
    stats = prof.key_averages()
    # Each launch is host time the GPU may wait for.
    launches = sum(e.count for e in stats if 'LaunchKernel' in e.key)
    print(f'\n{variant}: one training step, '
          f'{launches if cuda else "no"} kernel launches')
    print(stats.table(
        sort_by='self_device_time_total' if cuda else 'self_cpu_time_total',
        row_limit=top))


def print_table(args, results, memory, ops=None):
    load = os.getloadavg()
    run = ('eager' if args.compile is None else
           f'torch.compile {args.compile}')
    device = (torch.cuda.get_device_name(args.device)
              if torch.device(args.device).type == 'cuda' else
              f'cpu, {args.threads} threads')
    print(f'ResNet-{args.depth}, batch {args.batch}x{args.size}x'
          f'{args.size}, {device}, autocast {args.amp or "off"}, '
          f'{"channels_last" if args.channels_last else "NCHW"}, {run}, '
          'median of '
          f'{args.repeats} after {args.warmup} warm-up, torch '
          f'{torch.__version__}; load average {load[0]:.2f} '
          f'{load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs')
    # glibc returns large tensors to the OS on free unless told otherwise,
    # and every fresh page then costs a fault: say which regime this was.
    tuned = {k: v for k, v in os.environ.items() if k.startswith('MALLOC_')}
    print('malloc: ' + (', '.join(f'{k}={v}' for k, v in sorted(
        tuned.items())) if tuned else 'glibc defaults'))
    head = '| variant |'
    rule = '|---|'
    for mode in args.modes:
        head += f' {mode} s | {mode} / plain |'
        rule += '---|---|'
    if memory:
        head += (' saved MiB | saved / plain | peak MiB | peak / plain |')
        rule += '---|---|---|---|'
    if ops:
        head += ' ops | ops / plain |'
        rule += '---|---|'
    print(head)
    print(rule)
    for v in args.variants:
        row = f'| {v} |'
        for mode in args.modes:
            t, ref = results[mode][v], results[mode].get('plain')
            row += f' {t:.3f} | ' + (f'{t / ref:.3f}x |' if ref else '- |')
        if memory:
            # Tenths of a MiB: small test inputs differ by less than one.
            for m, ref in zip(memory[v], memory.get('plain', (None, None))):
                row += f' {m:.1f} | ' + (f'{m / ref:.3f}x |'
                                         if ref else '- |')
        if ops:
            ref = ops.get('plain')
            row += f' {ops[v]} | ' + (f'{ops[v] / ref:.3f}x |'
                                      if ref else '- |')
        print(row)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    results = time_variants(args)
    memory = {
        v: step_memory_mib(args, v)
        for v in args.variants
    } if args.memory else None
    ops = {v: step_op_calls(args, v)
           for v in args.variants} if args.ops else None
    print_table(args, results, memory, ops)
    if args.profile:
        for v in args.variants:
            profile_step(args, v, args.profile)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(args=vars(args), times=results, memory=memory,
                           ops=ops), f, indent=2)


if __name__ == '__main__':
    main()
