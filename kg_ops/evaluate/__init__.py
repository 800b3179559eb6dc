"""Link-prediction evaluation: filtered ranking (MRR, Hits@k), ROC-AUC against type-constrained
negatives, the HTML report and the embedding export behind ``kgops evaluate``."""
