"""JSON schemas of the config's thresholds, generated from audit_tasks.config's models: do not edit.

The DAG params are built from them (see audit_airflow.params). Regenerate:
python -c "from audit_airflow.params import write_field_schemas; write_field_schemas()"
"""

from typing import Any

FIELD_SCHEMAS: dict[str, dict[str, Any]] = {
    "checks.cooccurrence.max_conditional": {
        "description": "Largest allowed P(b | a) for a tag or attribute pair.",
        "exclusiveMinimum": 0,
        "maximum": 1,
        "type": "number",
    },
    "checks.cooccurrence.min_support": {
        "description": "Pairs seen fewer times than this are not judged.",
        "minimum": 1,
        "type": "integer",
    },
    "checks.cooccurrence.min_lift": {
        "description": "A pair is flagged only when its lift is at least this.",
        "minimum": 1,
        "type": "number",
    },
    "checks.cooccurrence.confidence": {
        "description": "Confidence level of the co-occurrence interval.",
        "exclusiveMaximum": 1,
        "exclusiveMinimum": 0,
        "type": "number",
    },
    "checks.cooccurrence.target_share": {
        "description": "Curator's goal for 'a without b' when suggesting images to add.",
        "exclusiveMaximum": 1,
        "exclusiveMinimum": 0,
        "type": "number",
    },
    "checks.cooccurrence.max_class_imbalance": {
        "description": "Largest allowed ratio of the biggest to the smallest class.",
        "minimum": 1,
        "type": "number",
    },
    "checks.saliency.max_spurious_share": {
        "description": "Largest allowed share of Grad-CAM energy on spurious regions.",
        "maximum": 1,
        "minimum": 0,
        "type": "number",
    },
    "checks.saliency.min_spurious_enrichment": {
        "description": "A spurious region is suspicious when its share exceeds its area this many times.",
        "exclusiveMinimum": 0,
        "type": "number",
    },
    "checks.saliency.min_core_share": {
        "description": "Smallest acceptable share of Grad-CAM energy on the object itself.",
        "maximum": 1,
        "minimum": 0,
        "type": "number",
    },
    "checks.saliency.max_flagged_fraction": {
        "description": "Largest allowed fraction of a class's images flagged as shortcuts.",
        "maximum": 1,
        "minimum": 0,
        "type": "number",
    },
    "checks.saliency.min_images": {
        "description": "Classes with fewer audited images are not judged.",
        "minimum": 1,
        "type": "integer",
    },
    "checks.subgroups.metric": {
        "description": "Metric compared across subgroups.",
        "enum": [
            "accuracy",
            "recall",
            "tpr",
            "fpr",
            "precision",
            "macro_recall",
            "macro_precision",
            "f1",
            "exact_match",
            "hamming_accuracy",
        ],
        "type": "string",
    },
    "checks.subgroups.max_gap": {
        "description": "Largest allowed metric gap between a group and the best group.",
        "maximum": 1,
        "minimum": 0,
        "type": "number",
    },
    "checks.subgroups.min_group_size": {
        "description": "Groups smaller than this are reported but not judged.",
        "minimum": 1,
        "type": "integer",
    },
    "checks.subgroups.confidence": {
        "description": "Confidence level of the subgroup intervals.",
        "exclusiveMaximum": 1,
        "exclusiveMinimum": 0,
        "type": "number",
    },
    "checks.subgroups.positive_class": {
        "anyOf": [{"minLength": 1, "type": "string"}, {"type": "null"}],
        "description": "Class whose recall/TPR/FPR/precision is judged (one of model.classes).",
    },
    "checks.subgroups.multiple_comparisons": {
        "description": "holm (default), bonferroni: family-wise error at most 1 - confidence; none: no adjustment.",
        "enum": ["holm", "bonferroni", "none"],
        "type": "string",
    },
    "checks.subgroups.n_bootstrap": {
        "description": "Bootstrap resamples per group for the macro metrics' intervals.",
        "maximum": 100000,
        "minimum": 100,
        "type": "integer",
    },
    "checks.ingest.max_quarantine_fraction": {
        "description": "Largest allowed fraction of input rows sent to quarantine.",
        "maximum": 1,
        "minimum": 0,
        "type": "number",
    },
    "checks.ingest.suite": {
        "anyOf": [{"minLength": 1, "type": "string"}, {"type": "null"}],
        "description": "A Great Expectations suite (GX 1.x JSON) run on the manifest rows beside the built-in rules.",
    },
    "checks.leakage.max_rate_gap": {
        "description": "Largest allowed excess rate of predicting b where a is present and b absent, vs neither.",
        "exclusiveMaximum": 1,
        "minimum": 0,
        "type": "number",
    },
    "checks.leakage.min_support": {
        "description": "Pairs with fewer images on either side (a without b; neither) are not judged.",
        "minimum": 1,
        "type": "integer",
    },
    "checks.leakage.confidence": {
        "description": "Confidence level of the rate-gap tests.",
        "exclusiveMaximum": 1,
        "exclusiveMinimum": 0.5,
        "type": "number",
    },
    "checks.leakage.multiple_comparisons": {
        "description": "holm (default), bonferroni: family-wise error at most 1 - confidence; none: no adjustment.",
        "enum": ["holm", "bonferroni", "none"],
        "type": "string",
    },
    "checks.leakage.worst_images": {
        "description": "Images per flagged pair shown in the report with their Grad-CAM for b.",
        "maximum": 32,
        "minimum": 0,
        "type": "integer",
    },
    "checks.strategies.min_cluster_share": {
        "description": "A cluster this large a share of its class may be flagged.",
        "exclusiveMinimum": 0,
        "maximum": 1,
        "type": "number",
    },
    "checks.strategies.min_images": {
        "description": "Classes (and clusters) with fewer maps are not judged (flagged).",
        "minimum": 2,
        "type": "integer",
    },
    "checks.strategies.max_clusters": {
        "description": "Most clusters per class (the eigengap picks k).",
        "maximum": 32,
        "minimum": 1,
        "type": "integer",
    },
    "checks.strategies.min_peak_consistency": {
        "description": "A fixed spot: at least this share of a cluster's peaks within 1 cell of its modal peak.",
        "exclusiveMinimum": 0,
        "maximum": 1,
        "type": "number",
    },
    "checks.strategies.max_spot_spread": {
        "description": "A fixed spot: RMS spread of the hot spot at most this (fraction of the image side).",
        "exclusiveMinimum": 0,
        "maximum": 1,
        "type": "number",
    },
    "checks.strategies.central_region": {
        "description": "Side of the central square (fraction of the image) where a fixed spot is not flagged.",
        "exclusiveMaximum": 1,
        "minimum": 0,
        "type": "number",
    },
    "checks.strategies.min_compactness": {
        "description": "A fixed spot: the 3x3 cells at its peak hold this many times their area's share.",
        "minimum": 0,
        "type": "number",
    },
    "checks.strategies.max_off_object_share": {
        "description": "With core boxes: a cluster with more of its map off the boxes than this is flagged.",
        "maximum": 1,
        "minimum": 0,
        "type": "number",
    },
    "checks.strategies.max_sample": {
        "description": "Maps per class clustered at most; the rest are assigned to the nearest centroid.",
        "maximum": 50000,
        "minimum": 100,
        "type": "integer",
    },
    "checks.strategies.neighbours": {
        "description": "Neighbours per map in the spectral kNN graph.",
        "maximum": 100,
        "minimum": 2,
        "type": "integer",
    },
    "checks.rarity.method": {
        "description": "Density per class: histogram (DB-VAE: smoothed histograms per dimension) or knn.",
        "enum": ["histogram", "knn"],
        "type": "string",
    },
    "checks.rarity.combine": {
        "description": "How per-dimension histograms combine: product (weighted geometric mean) or max (the lab).",
        "enum": ["product", "max"],
        "type": "string",
    },
    "checks.rarity.alpha": {
        "description": "Smoothing added to each density before 1/(density + alpha).",
        "exclusiveMinimum": 0,
        "maximum": 1,
        "type": "number",
    },
    "checks.rarity.bins": {
        "description": "Histogram bins per latent dimension.",
        "maximum": 100,
        "minimum": 2,
        "type": "integer",
    },
    "checks.rarity.dims": {
        "description": "Principal components of the features kept.",
        "maximum": 256,
        "minimum": 1,
        "type": "integer",
    },
    "checks.rarity.k": {
        "description": "knn: the neighbour whose distance sets the density.",
        "maximum": 100,
        "minimum": 1,
        "type": "integer",
    },
    "checks.rarity.quantiles": {
        "description": "Density quantiles per class (q1 rarest).",
        "maximum": 20,
        "minimum": 2,
        "type": "integer",
    },
    "checks.rarity.max_tail_gap": {
        "description": "Largest allowed accuracy gap, commonest quantile minus rarest.",
        "exclusiveMaximum": 1,
        "minimum": 0,
        "type": "number",
    },
    "checks.rarity.min_images": {
        "description": "Quantiles with fewer images are not judged.",
        "minimum": 1,
        "type": "integer",
    },
    "checks.rarity.confidence": {
        "description": "Confidence level of the tail-gap tests.",
        "exclusiveMaximum": 1,
        "exclusiveMinimum": 0.5,
        "type": "number",
    },
    "checks.rarity.max_weight": {
        "description": "Cap on a sample weight (weights have mean 1).",
        "minimum": 1,
        "type": "number",
    },
    "checks.image_properties.bins": {
        "description": "Quantile bins per numeric property (q1 lowest).",
        "maximum": 20,
        "minimum": 2,
        "type": "integer",
    },
    "checks.image_properties.subgroups": {
        "description": "The subgroup metric across each property's bins: report (listed, never failing), gate, or off.",
        "enum": ["report", "gate", "off"],
        "type": "string",
    },
    "checks.min_audited": {
        "description": "Fewer audited images than this make the run inconclusive (never green, no retraining).",
        "minimum": 0,
        "type": "integer",
    },
    "policy.baseline": {
        "description": "last_clean: compare with the newest passing run of the same audit; none: no baseline.",
        "enum": ["last_clean", "none"],
        "type": "string",
    },
    "policy.max_increase": {
        "additionalProperties": {"minimum": 0, "type": "number"},
        "description": "check.metric -> largest allowed increase over the baseline's value.",
        "type": "object",
    },
    "policy.warn": {
        "description": "Checks or check/subject/metric gates that warn when they fail, never fail the run.",
        "items": {"minLength": 1, "type": "string"},
        "type": "array",
    },
}
