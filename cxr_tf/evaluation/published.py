"""Published per-class test AUCs that the evaluation report sets our figures beside.

Source: X. Wang, Y. Peng, L. Lu, Z. Lu, M. Bagheri, R. M. Summers, "ChestX-ray8: Hospital-scale
Chest X-ray Database and Benchmarks on Weakly-Supervised Classification and Localization of
Common Thorax Diseases", CVPR 2017; the ChestX-ray14 figures are in the revised arXiv version,
arXiv:1705.02315v5 (14 Dec 2017), Table 4, row "ChestX-ray14", ResNet-50 initialised from
ImageNet, evaluated on the official test list (25,596 images). Their mean is 0.745.

Note: CheXNet (Rajpurkar et al. 2017, arXiv:1711.05225, Table 2) quotes a different "Wang et al.
(2017)" column (Atelectasis 0.716 ... Hernia 0.767, mean 0.738); those are not the figures
here. Compare like with like: these are on the official split, as the test split is.
"""

WANG2017_SOURCE = (
    "Wang et al. 2017, ChestX-ray8 (CVPR 2017), arXiv:1705.02315v5 Table 4, "
    "ChestX-ray14 ResNet-50, official test split"
)

WANG2017_AUC = {
    "Atelectasis": 0.7003,
    "Cardiomegaly": 0.8100,
    "Effusion": 0.7585,
    "Infiltration": 0.6614,
    "Mass": 0.6933,
    "Nodule": 0.6687,
    "Pneumonia": 0.6580,
    "Pneumothorax": 0.7993,
    "Consolidation": 0.7032,
    "Edema": 0.8052,
    "Emphysema": 0.8330,
    "Fibrosis": 0.7859,
    "Pleural_Thickening": 0.6835,
    "Hernia": 0.8717,
}

WANG2017_MEAN_AUC = sum(WANG2017_AUC.values()) / len(WANG2017_AUC)  # 0.7451
