from .cpu_amp_optim_wrapper import CPUAmpOptimWrapper
from .launch import enable_amp, setup_cpu_distributed

__all__ = ['CPUAmpOptimWrapper', 'enable_amp', 'setup_cpu_distributed']
