/** Form fields shared by the views. */

/** A one-line text input for names and user ids (no spell check, no capitals). */
export function TextInput(props: {
  id: string;
  testId: string;
  value: string;
  onValue: (value: string) => void;
  placeholder?: string;
  autoComplete?: string;
  autoFocus?: boolean;
  maxLength?: number;
  disabled?: boolean;
}) {
  return (
    <input
      id={props.id}
      data-testid={props.testId}
      placeholder={props.placeholder}
      autocomplete={props.autoComplete ?? 'off'}
      autoFocus={props.autoFocus}
      maxLength={props.maxLength}
      spellcheck={false}
      autocapitalize="off"
      value={props.value}
      disabled={props.disabled}
      onInput={(e) => props.onValue((e.target as HTMLInputElement).value)}
    />
  );
}
