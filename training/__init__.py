"""The trainers: train-guard (the teacher), distill (HarmAug KD of the student) and train-router
(the SafeRoute router), and what only they use."""
