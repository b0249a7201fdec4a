"""Evaluate step: score the trained model on the held-out split."""

import joblib
from common import model_dir, workdir, write_metrics
from sklearn.metrics import brier_score_loss, precision_score, recall_score, roc_auc_score

model = joblib.load(model_dir() / "model.joblib")
_X_train, X_test, _y_train, y_test = joblib.load(workdir() / "split.joblib")
proba = model.predict_proba(X_test)[:, 1]
predicted = (proba >= 0.5).astype(int)
metrics = {
    "roc_auc": roc_auc_score(y_test, proba),
    "recall": recall_score(y_test, predicted),
    "precision": precision_score(y_test, predicted),
    "brier": brier_score_loss(y_test, proba),
}
write_metrics(metrics)
print(", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
