"""CPU inference of ResNet backbones: onnxruntime against PyTorch eager.

Each variant (plain ResNet, MRLA-light ResNet; mmdet's backbone classes,
random weights, eval mode) is exported to ONNX with the TorchScript
exporter (opset 17, one file per batch size), then PyTorch (no grad; the
MRLA ops take the compiled kernels, as by default) and an onnxruntime CPU
session (all graph optimisations) run it on the same input, all variants
and both runtimes interleaved repeat by repeat in one process, so that a
change of machine load hits them alike. The table gives the medians, the
ratio onnxruntime / PyTorch and each variant's ratio to the plain ResNet.

Example::

    python tools/deployment/benchmark_onnxruntime.py --batches 1 8 \\
        --size 224 --threads 2 --repeats 11
"""
import argparse
import os
import os.path as osp
import statistics
import tempfile
import time

import torch

from mrla_mm.deployment import export_onnx, max_rel_error

VARIANTS = dict(plain=None, light=dict(type='MRLALight'))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--depth', type=int, default=50, choices=(18, 50, 101))
    p.add_argument('--batches', type=int, nargs='+', default=[1, 8])
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--repeats', type=int, default=11)
    p.add_argument('--variants', nargs='+', default=list(VARIANTS),
                   choices=list(VARIANTS))
    return p.parse_args(argv)


def build(variant, depth):
    from mrla_mm.models import MRLAResNet
    torch.manual_seed(0)
    model = MRLAResNet(depth, mrla_cfg=VARIANTS[variant], out_indices=(3, ))
    # mmdet's ResNet.train() returns None, so no chained .eval().
    model.eval()
    return model


def session(path, threads):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(
        path, opts, providers=['CPUExecutionProvider'])


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {v: build(v, args.depth) for v in args.variants}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch in args.batches:
            x = torch.randn(batch, 3, args.size, args.size,
                            generator=torch.Generator().manual_seed(0))
            runs = {}
            for v, model in models.items():
                path = export_onnx(
                    model, [x], osp.join(tmp, f'{v}_b{batch}.onnx'),
                    input_names=['input'], output_names=['out'])
                sess = session(path, args.threads)
                feed = {'input': x.numpy()}
                with torch.no_grad():
                    ref = model(x)[0]
                out = torch.from_numpy(sess.run(None, feed)[0])
                err = max_rel_error([out], [ref])
                runs[(v, 'pytorch')] = lambda m=model: m(x)
                runs[(v, 'onnxruntime')] = lambda s=sess, f=feed: s.run(
                    None, f)
                print(f'{v} batch {batch}: onnxruntime vs PyTorch max '
                      f'relative error {err:.2e}, '
                      f'{osp.getsize(path) / 2**20:.1f} MiB')
            times = {k: [] for k in runs}
            with torch.no_grad():
                for i in range(args.warmup + args.repeats):
                    for k, run in runs.items():
                        t0 = time.perf_counter()
                        run()
                        if i >= args.warmup:
                            times[k].append(time.perf_counter() - t0)
            med = {k: statistics.median(t) * 1e3 for k, t in times.items()}
            for v in args.variants:
                pt, ort_ = med[(v, 'pytorch')], med[(v, 'onnxruntime')]
                rows.append((v, batch, pt, ort_, ort_ / pt,
                             pt / med[(args.variants[0], 'pytorch')],
                             ort_ / med[(args.variants[0], 'onnxruntime')]))
    load = os.getloadavg()
    print(f'\nResNet-{args.depth} backbone, {args.size}x{args.size}, '
          f'{args.threads} threads, median of {args.repeats}; load average '
          f'{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}')
    first = args.variants[0]
    print(f'| variant | batch | PyTorch eager (ms) | onnxruntime (ms) | '
          f'onnxruntime / PyTorch | PyTorch vs {first} | '
          f'onnxruntime vs {first} |')
    print('|---|---|---|---|---|---|---|')
    for v, b, pt, ort_, ratio, rel_pt, rel_ort in rows:
        print(f'| {v} | {b} | {pt:.1f} | {ort_:.1f} | {ratio:.2f}x | '
              f'{rel_pt:.2f}x | {rel_ort:.2f}x |')


if __name__ == '__main__':
    main()
