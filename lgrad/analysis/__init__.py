"""Analysis tools: Hessian spectra, attention-SVM geometry, closed-form layer solves."""

__all__: list[str] = []
