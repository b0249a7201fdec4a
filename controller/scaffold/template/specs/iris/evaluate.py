"""Evaluate step: score the trained model on the held-out split."""

import joblib
from common import model_dir, workdir, write_metrics
from sklearn.metrics import accuracy_score, f1_score, log_loss

model = joblib.load(model_dir() / "model.joblib")
X_test, y_test = joblib.load(workdir() / "holdout.joblib")
predicted = model.predict(X_test)
metrics = {
    "accuracy": accuracy_score(y_test, predicted),
    "f1_macro": f1_score(y_test, predicted, average="macro"),
    "log_loss": log_loss(y_test, model.predict_proba(X_test)),
}
write_metrics(metrics)
print(", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
