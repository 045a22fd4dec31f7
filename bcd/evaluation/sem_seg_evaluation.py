"""(being written: registers its entry in EVALUATOR_TYPES)."""
