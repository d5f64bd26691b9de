#!/bin/bash
# Same seed, same figures: short runs of every training path, to compare two checkouts of a refactor.
#
#   bash benchmarks/same_figures.sh /tmp/before     # in the old checkout (its yolodistill installed)
#   bash benchmarks/same_figures.sh /tmp/after      # in the new one
#   diff /tmp/before/all_results.txt /tmp/after/all_results.txt
#
# Classification on scikit-learn's digits (needs `pip install -e ".[bench]"`): a teacher, Hinton KD, KD with
# 10 labels a class plus unlabeled images, feature KD, a QAT fine-tune. Detection on `data synth` (48/16
# images at 64 px): a yolov5s teacher, a yolov5n with output + pkd distillation, a QAT fine-tune with the
# teacher. Then `yolodistill quickstart --fast`. Every results.csv is gathered into OUTDIR/all_results.txt.
# About 1.5 minutes on 2 cores.
set -e
O=$1; [ -n "$O" ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$O"; mkdir -p "$O"
export OMP_NUM_THREADS=2
Y="python -m yolodistill"
$Y data digits --out $O/digits > /dev/null
C="--imgsz 8 --no-augment --workers 0 --project $O/cls --exist-ok"
T=$O/cls/teacher/weights/best.pt
$Y classify train --data $O/digits/full --model cnn --epochs 5 --name teacher $C
$Y classify distill --data $O/digits/full --model mlp_small --epochs 5 --name kd --teacher $T $C
$Y classify distill --data $O/digits/few --unlabeled $O/digits/unlabeled --model mlp_small --epochs 5 --name kdfew \
    --teacher $T $C
$Y classify distill --data $O/digits/full --model cnn_small --epochs 3 --name fkd --teacher $T --feature-layers auto $C
$Y classify train --data $O/digits/full --weights $O/cls/kd/weights/best.pt --qat --epochs 2 --name qat $C
$Y data synth --out $O/synth --n-train 48 --n-val 16 --imgsz 64 --difficulty 0 > /dev/null
D="--data $O/synth/data.yaml --imgsz 64 --batch-size 16 --workers 0 --device cpu --project $O/det --exist-ok \
   --noautoanchor --optimizer AdamW --hyp $ROOT/cfg/hyp.quickstart.yaml --nbs 16"
$Y train --cfg yolov5s.yaml --epochs 2 --name teacher $D
$Y train --cfg yolov5n.yaml --epochs 2 --name pkd --t_weights $O/det/teacher/weights/best.pt --d_feature \
    --feature-loss pkd --f_weight 0.1 $D
$Y train --weights $O/det/pkd/weights/best.pt --epochs 1 --name qat --qat --t_weights $O/det/teacher/weights/best.pt \
    --d_output $D
$Y quickstart --fast --out $O/qs > $O/qs.txt 2>&1
(cd "$O" && for f in $(find cls det qs -name results.csv | sort); do echo "== $f"; cat "$f"; done) > "$O/all_results.txt"
echo "results: $O/all_results.txt"
