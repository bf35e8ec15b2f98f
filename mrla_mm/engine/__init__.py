from .cpu_amp_optim_wrapper import CPUAmpOptimWrapper
from .launch import close_process_group, enable_amp, setup_cpu_distributed

__all__ = [
    'CPUAmpOptimWrapper', 'close_process_group', 'enable_amp',
    'setup_cpu_distributed'
]
