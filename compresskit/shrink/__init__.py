"""Width planning (back to front) and the surgery that emits the smaller dense model."""
