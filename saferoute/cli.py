"""`saferoute <command>`: one entry point for every stage of the chain."""

import importlib
import sys

COMMANDS = {
    "roles": ("dataset_builders.roles", "Split the labeled pool once into the teacher's, the router's, the validation and the student's rows."),
    "train-guard": ("training.train_guard", "Train a large guard (teacher): Llama-Guard-format LLM (TRL SFT + LoRA) or encoder classifier."),
    "build-corpus": ("dataset_builders.harmaug.build", "Build the HarmAug corpus: generate, filter, respond, label with the teacher, write."),
    "measure": ("dataset_builders.harmaug.measure", "Measure HarmAug generation: generators, the affirmative prefix, exemplar sources, throughput."),
    "distill": ("training.distill", "HarmAug knowledge distillation of the teacher into the student."),
    "train-router": ("training.train_router", "Train the SafeRoute router on the student's features."),
    "evaluate": ("evaluation.evaluate", "Evaluate guards / SafeRoute models on the six-benchmark suite."),
    "push": ("publishing.push", "Upload a model or dataset folder to the Hugging Face Hub."),
    "package": ("publishing.package", "Assemble a SafeRoute model folder from a student, a router and a large-guard reference."),
    "export": ("publishing.export", "Export a SafeRoute model to ONNX (fp32 and int8) for onnxruntime."),
    "serve": ("serving.server", "Serve a SafeRoute model over HTTP (OpenAI moderation API shape, dynamic batching)."),
    "demo": ("spaces_app.app", "Serve the Gradio demo of a SafeRoute model on localhost."),
    "quickstart": ("saferoute.quickstart", "Run the whole chain with the bundled offline models."),
    "ablate": ("saferoute.ablation", "The HarmAug ablation (arms x seeds) and the SafeRoute table from one recipe, after the quickstart."),
}


def usage():
    lines = ["usage: saferoute <command> [--config recipe.yaml] [flags]", "", "commands:"]
    lines += [f"  {name:<14}{help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`saferoute <command> --help` lists a command's flags."]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"saferoute: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
