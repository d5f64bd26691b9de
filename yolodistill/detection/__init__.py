"""Detection: YOLOv5 students distilled from YOLOv5 teachers, and the `train`, `val` and `detect` commands.

    from yolodistill.detection.trainer import DistillTrainer
    from yolodistill.detection.train_options import TrainOptions
    DistillTrainer(TrainOptions(data="data.yaml", cfg="yolov5n.yaml", t_weights="teacher.pt", d_output=True)).run()

train_options (the options), teacher (the frozen teacher), distillation (the YOLO output term, the layer pairs,
detection_distiller), unlabeled (images without labels), run_setup and trainer (the run on yolodistill.training),
inference (val, detect). Nothing is imported here, so the CLI's parser stays free of torch.
"""
