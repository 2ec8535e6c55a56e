"""Stand-in for LatentSync's scripts/inference.py (no model, no GPU): the same arguments, the same
files looked up relative to the working directory, and output the way LatentSync writes it: at
25 fps whatever the input's rate, two frames past the end, with AAC audio muxed in. The picture
is passed through, with a mark on the mouth so a test can see the clip came back."""

import argparse
import subprocess
import sys
from pathlib import Path

ap = argparse.ArgumentParser()
for name in ("--unet_config_path", "--inference_ckpt_path", "--video_path", "--audio_path", "--video_out_path"):
    ap.add_argument(name, required=True)
ap.add_argument("--inference_steps", type=int, default=20)
ap.add_argument("--guidance_scale", type=float, default=1.0)
ap.add_argument("--seed", type=int, default=1247)
args = ap.parse_args()
for need in (args.unet_config_path, args.inference_ckpt_path, "checkpoints/whisper/tiny.pt"):
    if not Path(need).is_file():
        sys.exit(f"FileNotFoundError: {need}")
print(f"Input video path: {args.video_path}")
mark = "drawbox=x=iw*0.4:y=ih*0.7:w=iw*0.2:h=ih*0.06:color=black:t=fill"
subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", args.video_path, "-i", args.audio_path, "-map", "0:v", "-map", "1:a",
                "-vf", f"fps=25,tpad=stop_mode=clone:stop=2,{mark}", "-c:v", "libx264", "-crf", "18", "-c:a", "aac",
                args.video_out_path], check=True)
