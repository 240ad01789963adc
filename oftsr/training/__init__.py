"""Training and evaluation: data, degradations, losses, EMA, metrics and the evaluation
protocol. Nothing here is imported by the ComfyUI nodes or by inference."""
