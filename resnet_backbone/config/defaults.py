"""Every config key the project knows, with its default.

Key names follow detectron2 wherever detectron2 has the concept, so a section of a detectron2 YAML
(MODEL.RESNETS, MODEL.FPN, MODEL.RPN, SOLVER, INPUT, ...) means the same thing here. DETR keys follow
the DETR detectron2 wrapper (MODEL.DETR.*). Keys that detectron2 does not have are marked "ours".
A key that is not defined here is an error when a YAML file or a command line sets it.
"""
from .config import CfgNode as CN

_C = CN()
_C.VERSION = 2

# ---------------------------------------------------------------------------- model
_C.MODEL = CN()
_C.MODEL.META_ARCHITECTURE = "FasterRCNN"
_C.MODEL.DEVICE = "cpu"
_C.MODEL.WEIGHTS = ""
_C.MODEL.MASK_ON = False
_C.MODEL.KEYPOINT_ON = False
_C.MODEL.LOAD_PROPOSALS = False
# Pixel statistics in the order of INPUT.FORMAT, on the 0-255 scale. These defaults belong to the
# MSRA/Caffe2 weights (BGR, std 1). For torchvision weights use RGB with ImageNet mean/std * 255.
_C.MODEL.PIXEL_MEAN = [103.530, 116.280, 123.675]
_C.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]
# ours: inference fast paths, one key per effect, applied by modeling/fast_paths optimize_for_inference (train_net
# --eval-only, demo, benchmark); each checked for parity in tests.
# channels_last (NHWC) weights and activations; Faster R-CNN also builds, trains and runs its input batch in it
_C.MODEL.CHANNELS_LAST = False
# fold FrozenBN / eval-mode BN into the conv weights and biases (the convs stay nn.Conv2d)
_C.MODEL.FUSE_FROZEN_BN = False
# CPU only (refused with another MODEL.DEVICE): convs prepacked for oneDNN, with ReLU, the residual add + ReLU of
# our ResNet blocks and the FPN's top-down add fused as post-ops. Only convs without a norm can be prepacked: with
# MODEL.RESNETS.NORM FrozenBN / BN / SyncBN it needs MODEL.FUSE_FROZEN_BN too (refused otherwise). A torch build
# without oneDNN: a warning, the model unchanged.
_C.MODEL.MKLDNN_PREPACK = False
# ours: wrap the model in torch.compile for inference (optimize_for_inference); off by default
_C.MODEL.COMPILE = False

_C.MODEL.BACKBONE = CN()
_C.MODEL.BACKBONE.NAME = "build_resnet_backbone"
# 0 = nothing frozen, 1 = stem, 2 = stem + res2, ... 5 = everything
_C.MODEL.BACKBONE.FREEZE_AT = 2

_C.MODEL.RESNETS = CN()
_C.MODEL.RESNETS.DEPTH = 50
_C.MODEL.RESNETS.OUT_FEATURES = ["res4"]
_C.MODEL.RESNETS.NUM_GROUPS = 1
# FrozenBN | BN | SyncBN | GN | "" (no norm)
_C.MODEL.RESNETS.NORM = "FrozenBN"
_C.MODEL.RESNETS.WIDTH_PER_GROUP = 64
# True: the stride-2 conv of a bottleneck is its 1x1 (MSRA/Caffe2); False: the 3x3 (torchvision)
_C.MODEL.RESNETS.STRIDE_IN_1X1 = True
_C.MODEL.RESNETS.RES5_DILATION = 1
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64
_C.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, False, False]
_C.MODEL.RESNETS.DEFORM_MODULATED = False
_C.MODEL.RESNETS.DEFORM_NUM_GROUPS = 1
# ours: zero-init the last norm of each residual branch (Goyal et al. 2017)
_C.MODEL.RESNETS.ZERO_INIT_RESIDUAL = False
# ours: > 0 adds global average pooling + fc with this many classes (an ImageNet classifier)
_C.MODEL.RESNETS.NUM_CLASSES = 0

_C.MODEL.FPN = CN()
_C.MODEL.FPN.IN_FEATURES = []
_C.MODEL.FPN.OUT_CHANNELS = 256
_C.MODEL.FPN.NORM = ""
_C.MODEL.FPN.FUSE_TYPE = "sum"
# ours: the input of the FPN's top block (the extra coarse levels): "" = the builder's own, detectron2's (res5
# for build_retinanet_resnet_fpn_backbone's P6/P7, p5 for build_resnet_fpn_backbone's max-pooled P6); "p5" makes
# RetinaNet's P6 from P5 (torchvision's retinanet_resnet50_fpn), "res5" from C5 (detectron2)
_C.MODEL.FPN.TOP_BLOCK_IN_FEATURE = ""
# ours: the 3x3 "output" conv on every level (fpn_output{k}), detectron2's FPN (True). False: P_k is the
# top-down sum lateral_k + up(T_{k+1}) itself, no fpn_output modules (DBNet's FPN in the paper's code, mmocr's
# FPNC and docTR: their heads reduce the sums with their own 3x3 convs). A checkpoint of the other layout is
# refused naming the first fpn_output key
_C.MODEL.FPN.OUTPUT_CONVS = True

_C.MODEL.PROPOSAL_GENERATOR = CN()
_C.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"
_C.MODEL.PROPOSAL_GENERATOR.MIN_SIZE = 0

_C.MODEL.ANCHOR_GENERATOR = CN()
_C.MODEL.ANCHOR_GENERATOR.NAME = "DefaultAnchorGenerator"
_C.MODEL.ANCHOR_GENERATOR.SIZES = [[32, 64, 128, 256, 512]]
_C.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
_C.MODEL.ANCHOR_GENERATOR.ANGLES = [[-90, 0, 90]]
_C.MODEL.ANCHOR_GENERATOR.OFFSET = 0.0
# ours: round the zero-centred cell anchors to whole pixels (torchvision's AnchorGenerator does; detectron2 does not).
# True also orders a level's cell anchors ratio-major as torchvision does (detectron2: size-major).
_C.MODEL.ANCHOR_GENERATOR.ROUND_CELL_ANCHORS = False

_C.MODEL.RPN = CN()
_C.MODEL.RPN.HEAD_NAME = "StandardRPNHead"
_C.MODEL.RPN.IN_FEATURES = ["res4"]
_C.MODEL.RPN.BOUNDARY_THRESH = -1
_C.MODEL.RPN.IOU_THRESHOLDS = [0.3, 0.7]
_C.MODEL.RPN.IOU_LABELS = [0, -1, 1]
_C.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256
_C.MODEL.RPN.POSITIVE_FRACTION = 0.5
_C.MODEL.RPN.BBOX_REG_LOSS_TYPE = "smooth_l1"
_C.MODEL.RPN.BBOX_REG_LOSS_WEIGHT = 1.0
_C.MODEL.RPN.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
_C.MODEL.RPN.SMOOTH_L1_BETA = 0.0
_C.MODEL.RPN.LOSS_WEIGHT = 1.0
_C.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 12000
_C.MODEL.RPN.PRE_NMS_TOPK_TEST = 6000
_C.MODEL.RPN.POST_NMS_TOPK_TRAIN = 2000
_C.MODEL.RPN.POST_NMS_TOPK_TEST = 1000
_C.MODEL.RPN.NMS_THRESH = 0.7
_C.MODEL.RPN.CONV_DIMS = [-1]
# ours: what the RPN losses are divided by: "batch_size" (detectron2: BATCH_SIZE_PER_IMAGE x images, for both
# terms) or "sampled" (torchvision: the number of anchors actually sampled, positives + negatives)
_C.MODEL.RPN.LOSS_NORMALIZER = "batch_size"

_C.MODEL.ROI_HEADS = CN()
_C.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
_C.MODEL.ROI_HEADS.NUM_CLASSES = 80
_C.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
_C.MODEL.ROI_HEADS.IOU_THRESHOLDS = [0.5]
_C.MODEL.ROI_HEADS.IOU_LABELS = [0, 1]
_C.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512
_C.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25
_C.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
_C.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5
_C.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT = True

# ours: whose small rules the two-stage detector follows where detectron2 has no key (modeling/rcnn/):
#   "detectron2": RPN NMS ranks proposals by objectness logit; proposals kept when both sides > PROPOSAL_GENERATOR.
#                 MIN_SIZE; RoI level = floor(4 + log2(sqrt(area) / 224 + 1e-8)); no minimum detection size
#   "torchvision": NMS ranks by sigmoid(logit); sides >= max(MIN_SIZE, 1e-3) kept; level = floor(4 +
#                 log2(sqrt(area) / 224) + 1e-6); detections with a side under 1e-2 px dropped before NMS
# RetinaNet follows it too (modeling/retinanet/postprocess.py): "detectron2" decodes without clipping before NMS,
# then clips to the output size and drops empty boxes; "torchvision" clips to the input image before NMS
_C.MODEL.RCNN_EDGE_RULES = "detectron2"

_C.MODEL.ROI_BOX_HEAD = CN()
_C.MODEL.ROI_BOX_HEAD.NAME = ""
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE = "smooth_l1"
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT = 1.0
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
_C.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = 0.0
_C.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 14
_C.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 0
_C.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
_C.MODEL.ROI_BOX_HEAD.NUM_FC = 0
_C.MODEL.ROI_BOX_HEAD.FC_DIM = 1024
_C.MODEL.ROI_BOX_HEAD.NUM_CONV = 0
_C.MODEL.ROI_BOX_HEAD.CONV_DIM = 256
_C.MODEL.ROI_BOX_HEAD.NORM = ""
_C.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False
_C.MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES = False

# Mask R-CNN's mask head (MODEL.MASK_ON): detectron2's MaskRCNNConvUpsampleHead keys and defaults
# (configs/Base-RCNN-FPN.yaml sets NUM_CONV 4, as detectron2's does); built as torchvision's MaskRCNNHeads +
# MaskRCNNPredictor (modeling/rcnn/mask_head.py)
_C.MODEL.ROI_MASK_HEAD = CN()
_C.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
_C.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14
_C.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = 0
_C.MODEL.ROI_MASK_HEAD.POOLER_TYPE = "ROIAlignV2"
_C.MODEL.ROI_MASK_HEAD.NUM_CONV = 0
_C.MODEL.ROI_MASK_HEAD.CONV_DIM = 256
_C.MODEL.ROI_MASK_HEAD.NORM = ""
_C.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = False

# ---------------------------------------------------------------------------- RetinaNet (d2 names)
# detectron2's keys with detectron2's meaning (modeling/retinanet/build.py reads or refuses each one); anchors come
# from MODEL.ANCHOR_GENERATOR, detections per image from TEST.DETECTIONS_PER_IMAGE
_C.MODEL.RETINANET = CN()
_C.MODEL.RETINANET.NUM_CLASSES = 80
_C.MODEL.RETINANET.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
_C.MODEL.RETINANET.NUM_CONVS = 4
_C.MODEL.RETINANET.IOU_THRESHOLDS = [0.4, 0.5]
_C.MODEL.RETINANET.IOU_LABELS = [0, -1, 1]
_C.MODEL.RETINANET.PRIOR_PROB = 0.01
_C.MODEL.RETINANET.SCORE_THRESH_TEST = 0.05
_C.MODEL.RETINANET.TOPK_CANDIDATES_TEST = 1000
_C.MODEL.RETINANET.NMS_THRESH_TEST = 0.5
_C.MODEL.RETINANET.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
_C.MODEL.RETINANET.FOCAL_LOSS_GAMMA = 2.0
_C.MODEL.RETINANET.FOCAL_LOSS_ALPHA = 0.25
_C.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA = 0.1
_C.MODEL.RETINANET.BBOX_REG_LOSS_TYPE = "smooth_l1"
_C.MODEL.RETINANET.NORM = ""
# ours: what both loss sums are divided by: "ema" (detectron2: an exponential moving average, momentum 0.9 from 100,
# of the batch's positive-anchor count) or "per_image" (torchvision: each image's sums by its own positive count,
# at least 1, then averaged over the images)
_C.MODEL.RETINANET.LOSS_NORMALIZER = "ema"

# ---------------------------------------------------------------------------- DETR (d2 names)
_C.MODEL.DETR = CN()
_C.MODEL.DETR.NUM_CLASSES = 80
_C.MODEL.DETR.FROZEN_WEIGHTS = ""
_C.MODEL.DETR.CLASS_WEIGHT = 1.0
_C.MODEL.DETR.GIOU_WEIGHT = 2.0
_C.MODEL.DETR.L1_WEIGHT = 5.0
_C.MODEL.DETR.DEEP_SUPERVISION = True
_C.MODEL.DETR.NO_OBJECT_WEIGHT = 0.1
_C.MODEL.DETR.MASK_ON = False
_C.MODEL.DETR.NHEADS = 8
_C.MODEL.DETR.DROPOUT = 0.1
_C.MODEL.DETR.DIM_FEEDFORWARD = 2048
_C.MODEL.DETR.ENC_LAYERS = 6
_C.MODEL.DETR.DEC_LAYERS = 6
_C.MODEL.DETR.PRE_NORM = False
_C.MODEL.DETR.HIDDEN_DIM = 256
_C.MODEL.DETR.NUM_OBJECT_QUERIES = 100

# ---------------------------------------------------------------------------- DBNet (ours)
_C.MODEL.DBNET = CN()
_C.MODEL.DBNET.IN_FEATURES = ["p2", "p3", "p4", "p5"]
_C.MODEL.DBNET.INNER_CHANNELS = 64  # per level after reduction; 4 levels concatenated
_C.MODEL.DBNET.K = 50.0
_C.MODEL.DBNET.SHRINK_RATIO = 0.4
_C.MODEL.DBNET.THRESH_MIN = 0.3
_C.MODEL.DBNET.THRESH_MAX = 0.7
_C.MODEL.DBNET.PROB_LOSS_WEIGHT = 1.0
_C.MODEL.DBNET.THRESH_LOSS_WEIGHT = 10.0
_C.MODEL.DBNET.BINARY_LOSS_WEIGHT = 1.0
_C.MODEL.DBNET.NEG_POS_RATIO = 3.0
_C.MODEL.DBNET.BINARIZE_THRESH = 0.3
_C.MODEL.DBNET.BOX_THRESH = 0.6
_C.MODEL.DBNET.UNCLIP_RATIO = 1.5
_C.MODEL.DBNET.MAX_CANDIDATES = 1000
_C.MODEL.DBNET.MIN_SIZE = 3
# norm in the DB head's reductions and map heads ("BN", "GN", "FrozenBN", "" ...)
_C.MODEL.DBNET.NORM = "BN"
# training: text whose shorter side is below this many input pixels is treated as don't care
_C.MODEL.DBNET.MIN_TEXT_SIZE = 8.0
# ours: DBNet++ (Liao et al., TPAMI 2022): the levels fused by Adaptive Scale Fusion (a 3x3 conv, then
# scale-channel-spatial attention giving one weight map per level) instead of plain concatenation (modeling/text/asf.py)
_C.MODEL.DBNET.ASF = False
# ours: channels of the ASF's 3x3 conv (the attention's input; its channel attention uses a quarter of them).
# 0 = the fused channel count, len(IN_FEATURES) x INNER_CHANNELS (mmocr's DBNet++); MhLiao/DB uses a quarter of that.
# Only with ASF True.
_C.MODEL.DBNET.ASF_CHANNELS = 0

# ---------------------------------------------------------------------------- input
_C.INPUT = CN()
_C.INPUT.MIN_SIZE_TRAIN = (800,)
_C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
_C.INPUT.MAX_SIZE_TRAIN = 1333
_C.INPUT.MIN_SIZE_TEST = 800
_C.INPUT.MAX_SIZE_TEST = 1333
_C.INPUT.RANDOM_FLIP = "horizontal"
_C.INPUT.CROP = CN({"ENABLED": False})
_C.INPUT.CROP.TYPE = "relative_range"
_C.INPUT.CROP.SIZE = [0.9, 0.9]
_C.INPUT.FORMAT = "BGR"
# ours: how images are resized (data/transforms.py):
#   "pil"         detectron2's ResizeShortestEdge: sides rounded (int(x + 0.5)), PIL bilinear on uint8 (antialiased
#                 when shrinking), uint8 out. DETR's official code resizes with PIL bilinear too.
#   "bilinear"    the earlier behaviour: torch bilinear without antialiasing, uint8 out (cv2.INTER_LINEAR-like),
#                 sides by the earlier rule (one pixel off detectron2's where a side lands on .5, e.g. 1:2 images)
#   "torchvision" torchvision's GeneralizedRCNNTransform: scale = min(MIN / short, MAX / long) (a Python float, as its
#                 eager path), sides floor(side * scale), bilinear without antialiasing on float pixels, float32 out
#                 (not rounded)
_C.INPUT.RESIZE_METHOD = "pil"
_C.INPUT.MASK_FORMAT = "polygon"
# ours: random rotation in degrees (text detection); 0 disables
_C.INPUT.ROTATION_ANGLE = 0.0
# ours: PIL's decompression-bomb limit in pixels (0 = PIL's default)
_C.INPUT.MAX_IMAGE_PIXELS = 0
# ---- transforms.v2 augmentations (ours; both off by default; data/transforms.py)
# large-scale jitter (detectron2's new-baselines recipe): flip, resize to fit SCALE x SIZE with SCALE drawn in
# SCALE_RANGE, random crop to SIZE (H, W), pad right/bottom to SIZE with PAD_VALUE. Replaces the
# MIN_SIZE_TRAIN / MAX_SIZE_TRAIN resize in training; cannot be combined with INPUT.CROP or ROTATION_ANGLE.
_C.INPUT.LSJ = CN({"ENABLED": False})
_C.INPUT.LSJ.SCALE_RANGE = [0.1, 2.0]
_C.INPUT.LSJ.SIZE = [1024, 1024]
_C.INPUT.LSJ.PAD_VALUE = 128.0
# photometric distortion (training only): brightness / contrast / saturation factors drawn in [1 - s, 1 + s],
# hue shift in [-HUE, HUE] (fraction of the colour circle); 0 leaves that property alone
_C.INPUT.PHOTOMETRIC = CN({"ENABLED": False})
_C.INPUT.PHOTOMETRIC.BRIGHTNESS = 0.125
_C.INPUT.PHOTOMETRIC.CONTRAST = 0.5
_C.INPUT.PHOTOMETRIC.SATURATION = 0.5
_C.INPUT.PHOTOMETRIC.HUE = 0.05

# ---------------------------------------------------------------------------- data
_C.DATASETS = CN()
_C.DATASETS.TRAIN = ()
_C.DATASETS.PROPOSAL_FILES_TRAIN = ()
_C.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN = 2000
_C.DATASETS.TEST = ()
_C.DATASETS.PROPOSAL_FILES_TEST = ()
_C.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST = 1000

_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
_C.DATALOADER.ASPECT_RATIO_GROUPING = True
_C.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"
_C.DATALOADER.REPEAT_THRESHOLD = 0.0
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True
# ours: what a bad sample (unreadable image, broken annotation) does: "error" stops with a message
# naming the file and record; "skip" drops it and counts it in the log.
_C.DATALOADER.ON_BAD_SAMPLE = "error"

# ---------------------------------------------------------------------------- solver
_C.SOLVER = CN()
# ours: "SGD" or "ADAMW" (the DETR d2 wrapper's name)
_C.SOLVER.OPTIMIZER = "SGD"
_C.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
_C.SOLVER.MAX_ITER = 40000
_C.SOLVER.BASE_LR = 0.001
_C.SOLVER.BASE_LR_END = 0.0
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.NESTEROV = False
_C.SOLVER.WEIGHT_DECAY = 0.0001
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0
_C.SOLVER.WEIGHT_DECAY_BIAS = None
_C.SOLVER.BIAS_LR_FACTOR = 1.0
# DETR d2 wrapper's name: lr multiplier for backbone parameters
_C.SOLVER.BACKBONE_MULTIPLIER = 1.0
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.STEPS = (30000,)
_C.SOLVER.NUM_DECAYS = 3
_C.SOLVER.WARMUP_FACTOR = 1.0 / 1000
_C.SOLVER.WARMUP_ITERS = 1000
_C.SOLVER.WARMUP_METHOD = "linear"
_C.SOLVER.RESCALE_INTERVAL = False
_C.SOLVER.CHECKPOINT_PERIOD = 5000
_C.SOLVER.IMS_PER_BATCH = 16
# detectron2's: > 0 and different from the world size: the Trainer scales IMS_PER_BATCH and BASE_LR by
# world / REFERENCE_WORLD_SIZE and MAX_ITER, STEPS, WARMUP_ITERS, CHECKPOINT_PERIOD, TEST.EVAL_PERIOD by its inverse
# (Trainer.auto_scale_workers; config.yaml keeps the values as given)
_C.SOLVER.REFERENCE_WORLD_SIZE = 0
_C.SOLVER.CLIP_GRADIENTS = CN({"ENABLED": False})
_C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
_C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
_C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
# detectron2: a bool. Ours adds two words (utils/precision.py): "auto" = DTYPE where this device runs it natively
# (bf16 on a CPU with AMX / AVX512-BF16, fp16 or bf16 on CUDA), float32 elsewhere; "force" = DTYPE even where it
# is only emulated (CPU). True on a device without native DTYPE is refused before the model is built.
_C.SOLVER.AMP = CN({"ENABLED": False})
# ours: the autocast dtype, "bfloat16" or "float16", on CPU and CUDA alike (fp16 on CUDA adds a GradScaler)
_C.SOLVER.AMP.DTYPE = "bfloat16"
# ours: a non-finite loss or gradient "error"s (naming iteration and loss term) or "skip"s the step
_C.SOLVER.NONFINITE_POLICY = "error"
# ours: keep model_best.pth by this evaluation metric (e.g. "bbox/AP"); "" disables
_C.SOLVER.BEST_CHECKPOINT_METRIC = ""
_C.SOLVER.BEST_CHECKPOINT_MODE = "max"

# ---------------------------------------------------------------------------- EMA + gradient accumulation (ours)
# ours: micro-batches of SOLVER.IMS_PER_BATCH images per optimizer step (effective batch = IMS_PER_BATCH x this);
# losses are scaled by 1/steps; SOLVER.MAX_ITER, the LR schedule, CHECKPOINT_PERIOD and EVAL_PERIOD count
# optimizer steps
_C.SOLVER.GRAD_ACCUM_STEPS = 1
# d2go's names: an exponential moving average of the weights and buffers (engine/ema.py), updated after every
# optimizer step; evaluation (periodic, final, --eval-only) uses it; checkpoints store it as "model_ema"
_C.MODEL_EMA = CN({"ENABLED": False})
_C.MODEL_EMA.DECAY = 0.9998
# ours: before this optimizer step the EMA is a copy of the model (averaging starts here)
_C.MODEL_EMA.START_ITER = 0

# ---------------------------------------------------------------------------- test
_C.TEST = CN()
# [[task, metric, expected, tolerance], ...]: tools/train_net.py fails the run (naming the metric) when the final
# evaluation misses one (detectron2's verify_results)
_C.TEST.EXPECTED_RESULTS = []
_C.TEST.EVAL_PERIOD = 0
_C.TEST.KEYPOINT_OKS_SIGMAS = []
_C.TEST.DETECTIONS_PER_IMAGE = 100
_C.TEST.AUG = CN({"ENABLED": False})
_C.TEST.AUG.MIN_SIZES = (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)
_C.TEST.AUG.MAX_SIZE = 4000
_C.TEST.AUG.FLIP = True
# before every evaluation (each TEST.EVAL_PERIOD and the end) the BatchNorm statistics are recomputed over NUM_ITER
# training batches (engine/precise_bn.py); skipped, with a log line, when no BatchNorm trains (FrozenBN)
_C.TEST.PRECISE_BN = CN({"ENABLED": False})
_C.TEST.PRECISE_BN.NUM_ITER = 200
# ours: "pycocotools" or "faster_coco_eval"
_C.TEST.EVALUATOR_BACKEND = "pycocotools"

# ---------------------------------------------------------------------------- misc
_C.OUTPUT_DIR = "./output"
_C.SEED = -1
_C.CUDNN_BENCHMARK = False
# ours: on CPU, treat denormal floats as zero (FTZ/DAZ). A matmul fed denormals runs 50-180x slower on x86; in
# Faster R-CNN training they show up in the box head's gradients after a few steps. Set at setup, before any
# parallel work, so every intra-op thread inherits it.
_C.FLUSH_DENORMAL = True
# refused unless 0 (training-time visualization is not implemented; config/refused.py lists every refused key)
_C.VIS_PERIOD = 0
# ours: iterations between log lines / metrics.json records
_C.LOG_PERIOD = 20

_C.GLOBAL = CN()
_C.GLOBAL.HACK = 1.0
