"""Prepare step: split the data and fit the feature scaler, shared with the later steps."""

import joblib
from common import load_dataset, params, workdir
from sklearn.model_selection import train_test_split

p = params()
X, y = load_dataset()
split = train_test_split(X, y, test_size=p.get("test_size", 0.25), random_state=p.get("seed", 0), stratify=y)
joblib.dump(split, workdir() / "split.joblib")
print(f"split {len(X)} rows into {len(split[0])} train / {len(split[1])} test")
