"""Train step: gradient-boosted trees on the prepared split, saved for serving."""

import json

import joblib
from common import model_dir, params, workdir
from sklearn.ensemble import GradientBoostingClassifier

p = params()
X_train, _X_test, y_train, _y_test = joblib.load(workdir() / "split.joblib")
model = GradientBoostingClassifier(
    n_estimators=int(p.get("n_estimators", 100)),
    learning_rate=float(p.get("learning_rate", 0.1)),
    max_depth=int(p.get("max_depth", 3)),
    random_state=p.get("seed", 0),
)
model.fit(X_train, y_train)
out = model_dir()
joblib.dump(model, out / "model.joblib")
(out / "model-settings.json").write_text(
    json.dumps({"name": "breast-cancer", "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib"}}, indent=2)
)
print(f"trained {model.n_estimators_} trees")
