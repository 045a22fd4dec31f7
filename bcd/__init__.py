"""bcd: knowledge distillation for dense prediction (segmentation, detection, instance seg)."""


def _check_torch_pair() -> None:
    """Fail at import, in one sentence, when torch and torchvision cannot work together.

    The usual cause is the CPU-only ``torch+cpu`` wheel beside the registry's torchvision, whose
    compiled operators need the CUDA-enabled torch (``operator torchvision::nms does not exist``).
    """
    fix = (
        'reinstall the tested pair with: pip install -c constraints.txt -e ".[dev]" '
        '(or pip install "torch==2.13.0,!=2.13.0+cpu" torchvision==0.28.0)'
    )
    try:
        import torch  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the machine
        raise ImportError(f"bcd needs PyTorch, which failed to import ({e}); {fix}.") from e
    try:
        import torchvision  # noqa: F401
        from torchvision.ops import nms

        nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
    except Exception as e:  # pragma: no cover - depends on the machine
        raise ImportError(
            f"torch {torch.__version__} and torchvision cannot work together ({type(e).__name__}: "
            f"{e}); {fix}."
        ) from e


_check_torch_pair()

__version__ = "0.1.0"
