"""Run an ONNX model in OpenCV DNN: a script of its own, because OpenCV 4.x and 5.x cannot share
one environment and a runtime that crashes must fail a test, not kill pytest's process.

usage: python tests/opencv_run.py MODEL.onnx IMAGES.npy LOGITS.npy
It needs only numpy and opencv-python-headless, and prints the OpenCV version it ran.
"""

import sys

import cv2
import numpy as np


def main() -> None:
    model, images, logits = sys.argv[1:4]
    net = cv2.dnn.readNetFromONNX(model)
    net.setInput(np.load(images))
    np.save(logits, net.forward())
    print(cv2.__version__)


if __name__ == "__main__":
    main()
