"""Train step: fit a logistic regression on the training split and save it for serving."""

import json

import flywheel_reference
import joblib
from common import FEATURES, load_dataset, model_dir, params, workdir
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

p = params()
X, y = load_dataset()
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=p.get("test_size", 0.3), random_state=p.get("seed", 0), stratify=y
)
model = LogisticRegression(C=p.get("C", 1.0), max_iter=int(p.get("max_iter", 200)))
model.fit(X_train, y_train)

out = model_dir()
joblib.dump(model, out / "model.joblib")
(out / "model-settings.json").write_text(
    json.dumps({"name": "iris", "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib"}}, indent=2)
)
joblib.dump((X_test, y_test), workdir() / "holdout.joblib")
# The training inputs as the served model receives them, and its predictions: Flywheel's drift reference.
flywheel_reference.write(X_train, FEATURES, predictions=model.predict(X_train))
print(f"trained LogisticRegression(C={model.C}) on {len(X_train)} rows")
