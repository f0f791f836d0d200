// Syntax highlighting of a `%%sandbox [options] INTERPRETER` cell in the interpreter's
// language: shell for bash, sh, dash, zsh and ksh (the default interpreter is bash),
// Python for python, python3, python3.12, ...
//
// JupyterLab 4 highlights every code cell in the kernel's language (for IPython, Python)
// and has no mapping for cell magics (jupyterlab/jupyterlab#15324). A cell's editor uses
// its model's mimeType, which is local to this page (not saved, not shared), so each code
// cell whose first line is such a `%%sandbox` gets that language's mimeType, and any other
// cell we changed gets the notebook's back (others are left alone). The notebook sets every cell's mimeType when a cell is created
// and when the kernel's language changes; each change is checked and put right at once.
import { INotebookModel, INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';

type CellModel = ReturnType<INotebookModel['cells']['get']>;

const SHELL = 'text/x-sh';
const PYTHON = 'text/x-python';
/** The options of `%%sandbox` that take a value (see sandbox_magics/magics/_args.py). */
const VALUED = new Set([
  '--profile', '-p', '--timeout', '--env', '--session', '--out', '--err', '--name',
  '--upload', '--download'
]);

/** The mimeType for a cell's source, or null when it is not a `%%sandbox` cell we know. */
export function sandboxMimeType(source: string): string | null {
  const line = /^%%sandbox(?:[ \t]+([^\n]*))?(?:\n|$)/.exec(source);
  if (!line) {
    return null;
  }
  // The words as a shell splits them, near enough for a first line.
  const words = [...(line[1] ?? '').matchAll(/"[^"]*"|'[^']*'|\S+/g)].map(m => m[0]);
  let interpreter = 'bash';
  for (let i = 0; i < words.length; i++) {
    if (words[i].startsWith('-')) {
      i += VALUED.has(words[i]) ? 1 : 0;
      continue;
    }
    interpreter = words[i];
    break;
  }
  const name = interpreter.replace(/^.*\//, '');
  if (/^(ba|da|z|k)?sh$/.test(name)) {
    return SHELL;
  }
  if (/^python(\d+(\.\d+)*)?$/.test(name)) {
    return PYTHON;
  }
  return null;
}

export function highlightSandboxCells(tracker: INotebookTracker): void {
  const watch = (panel: NotebookPanel) => {
    const notebook = panel.content;
    const changed = new WeakSet<CellModel>(); // cells whose mimeType we set
    const fix = (cell: CellModel) => {
      if (cell.isDisposed) {
        return;
      }
      const wanted = sandboxMimeType(cell.sharedModel.getSource());
      if (wanted) {
        changed.add(cell);
        if (cell.mimeType !== wanted) {
          cell.mimeType = wanted;
        }
      } else if (changed.has(cell)) {
        changed.delete(cell);
        cell.mimeType = notebook.codeMimetype;
      }
    };
    const seen = new WeakSet<object>();
    const follow = (cell: CellModel) => {
      if (cell.type !== 'code' || seen.has(cell)) {
        return;
      }
      seen.add(cell);
      cell.sharedModel.changed.connect((_, change) => {
        if (change.sourceChange) {
          fix(cell);
        }
      });
      cell.mimeTypeChanged.connect(() => fix(cell));
      fix(cell);
    };
    const attach = () => {
      const model = notebook.model;
      if (!model || seen.has(model)) {
        return;
      }
      seen.add(model);
      for (const cell of model.cells) {
        follow(cell);
      }
      model.cells.changed.connect((_, change) => change.newValues.forEach(follow));
    };
    notebook.modelChanged.connect(attach);
    attach();
  };
  tracker.widgetAdded.connect((_, panel) => watch(panel));
  tracker.forEach(watch);
}
