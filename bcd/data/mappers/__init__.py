"""Dataset mappers (dataset dict -> model input), registered in ``MAPPER_REGISTRY``."""
from . import detection, sem_seg  # noqa: F401
from . import object_seg  # noqa: F401
