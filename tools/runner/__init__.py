"""The runners' machinery, sourced by ``run_all_{voc,coco,demo}.sh`` (no Python here):
``runner_args.sh`` parses and validates the runner variables, ``pipeline.sh`` runs the steps with
their provenance markers and the EXPDIR lock, ``fetch_lib.sh`` downloads and verifies archives
for ``config_voc.sh`` / ``config_coco.sh``."""
