import glob
import importlib.util
import os
import os.path as osp
import warnings

from setuptools import find_packages, setup

OPS_DIR = osp.join('mrla_mm', 'ops', 'csrc')


def get_version():
    scope = {}
    with open(osp.join(osp.dirname(__file__), 'mrla_mm', 'version.py')) as f:
        exec(compile(f.read(), 'version.py', 'exec'), scope)
    return scope['__version__']


def parse_requirements(fname):
    """Read a requirements file, following ``-r`` includes, skip comments."""
    reqs = []
    with open(fname) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if not line:
                continue
            if line.startswith('-r '):
                reqs += parse_requirements(
                    osp.join(osp.dirname(fname), line[3:].strip()))
            else:
                reqs.append(line)
    return reqs


def package_dir(name):
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def mmcv_include_dirs():
    """mmcv's C++ helper headers, taken from the installed mmcv."""
    root = package_dir('mmcv')
    common = root and osp.join(root, 'ops', 'csrc', 'common')
    if not common or not osp.exists(
            osp.join(common, 'pytorch_device_registry.hpp')):
        raise RuntimeError(
            'the MRLA ops need the C++ headers of an installed mmcv '
            '(mmcv/ops/csrc/common/pytorch_device_registry.hpp); install '
            'mmcv first or set MRLA_WITH_OPS=0 to skip the extension')
    return [common, osp.join(common, 'cuda')]


def cuda_wheel_dirs():
    """Headers and libraries of the CUDA runtime shipped with torch's
    wheels (``nvidia/cu*``), which a partial CUDA toolkit may lack."""
    root = package_dir('nvidia')
    if root is None:
        return [], []
    incs = sorted(glob.glob(osp.join(root, 'cu[0-9]*', 'include')))
    libs = sorted(glob.glob(osp.join(root, 'cu[0-9]*', 'lib')))
    return incs, libs


def make_extensions():
    """The ``mrla_mm._ext`` extension: CPU always, CUDA when a toolkit is
    found (``FORCE_CUDA=1`` forces it); ``MRLA_WITH_OPS=0`` builds none."""
    if os.getenv('MRLA_WITH_OPS', '1') == '0':
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import (
            CUDA_HOME,
            BuildExtension,
            CppExtension,
            CUDAExtension,
        )
    except ImportError:
        warnings.warn('torch is not importable: building mrla_mm without '
                      'its compiled ops (the pure-PyTorch path is used)')
        return [], {}
    sources = glob.glob(osp.join(OPS_DIR, 'pytorch', '*.cpp')) + glob.glob(
        osp.join(OPS_DIR, 'pytorch', 'cpu', '*.cpp'))
    include_dirs = [osp.abspath(osp.join(OPS_DIR, 'common'))
                    ] + mmcv_include_dirs()
    # Our own sources need C++20 whatever the torch headers would pick.
    # -fopenmp: ATen's parallel_for runs its threads only in code built
    # with OpenMP (torch's CPU build uses it); without it the kernels run
    # on one thread. The link resolves to the libgomp torch has loaded.
    cxx_flags = ['-O3', '-std=c++20', '-fopenmp']
    link_flags = ['-fopenmp']
    define_macros = []
    with_cuda = os.getenv('FORCE_CUDA', '0') == '1' or (
        torch.cuda.is_available() and CUDA_HOME is not None)
    if not with_cuda:
        return [
            CppExtension(
                'mrla_mm._ext',
                sorted(sources),
                include_dirs=include_dirs,
                extra_compile_args={'cxx': cxx_flags},
                extra_link_args=link_flags)
        ], {'build_ext': BuildExtension}
    sources += glob.glob(osp.join(OPS_DIR, 'pytorch', 'cuda', '*.cu'))
    sources += glob.glob(osp.join(OPS_DIR, 'pytorch', 'cuda', '*.cpp'))
    include_dirs.append(osp.abspath(osp.join(OPS_DIR, 'common', 'cuda')))
    wheel_incs, wheel_libs = cuda_wheel_dirs()
    define_macros.append(('MRLA_WITH_CUDA', None))
    return [
        CUDAExtension(
            'mrla_mm._ext',
            sorted(sources),
            include_dirs=include_dirs + wheel_incs,
            library_dirs=wheel_libs,
            define_macros=define_macros,
            extra_link_args=link_flags,
            extra_compile_args={
                'cxx': cxx_flags,
                'nvcc': ['-O3', '-std=c++20', '--expt-relaxed-constexpr'],
            })
    ], {'build_ext': BuildExtension}


if __name__ == '__main__':
    ext_modules, cmdclass = make_extensions()
    setup(
        name='mrla_mm',
        version=get_version(),
        description='MRLA (multi-head recurrent layer attention) for '
        'OpenMMLab: mmdetection and mmpretrain',
        long_description=open('README.md').read()
        if osp.exists('README.md') else '',
        long_description_content_type='text/markdown',
        license='Apache License 2.0',
        python_requires='>=3.9',
        packages=find_packages(exclude=('configs', 'tools', 'tests')),
        include_package_data=True,
        install_requires=parse_requirements('requirements/runtime.txt'),
        extras_require={
            'tests': parse_requirements('requirements/tests.txt'),
            'build': parse_requirements('requirements/build.txt'),
            'deploy': parse_requirements('requirements/deploy.txt'),
        },
        ext_modules=ext_modules,
        cmdclass=cmdclass,
        zip_safe=False)
