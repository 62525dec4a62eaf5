//! keepalived.conf's syntax: the tokenizer and the parser that build the
//! statement tree (see the module doc of [`super`] for the rules they
//! follow, from keepalived's `lib/parser.c`).

/// A problem that stops the conversion, at a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SyntaxError {
    /// 1-based line of the problem.
    pub(super) line: usize,
    /// What is wrong.
    pub(super) message: String,
}

impl SyntaxError {
    /// A problem at `line`.
    pub(super) fn new(line: usize, message: impl Into<String>) -> Self {
        SyntaxError {
            line,
            message: message.into(),
        }
    }
}

/// A token of keepalived.conf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Token {
    /// A keyword or an argument (quotes removed).
    Word(String),
    /// `{`
    Open,
    /// `}`
    Close,
    /// The end of a statement's line (after `\` continuations).
    End,
}

/// Splits keepalived.conf text into tokens, each with its 1-based line.
pub(super) fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, SyntaxError> {
    let mut tokens = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let mut word = String::new();
        // A word has started (it may be an empty quoted string "").
        let mut in_word = false;
        let mut in_quote = false;
        let mut continued = false;
        let flush = |word: &mut String, in_word: &mut bool, tokens: &mut Vec<_>| {
            if *in_word {
                tokens.push((line, Token::Word(std::mem::take(word))));
                *in_word = false;
            }
        };
        let mut chars = raw.chars().peekable();
        while let Some(c) = chars.next() {
            if in_quote {
                match c {
                    '"' => in_quote = false,
                    '\\' if matches!(chars.peek(), Some('"' | '\\')) => {
                        word.extend(chars.next());
                    }
                    _ => word.push(c),
                }
                continue;
            }
            match c {
                '"' => {
                    in_quote = true;
                    in_word = true;
                }
                '#' | '!' => break,
                '\\' => match chars.peek() {
                    None => continued = true,
                    Some('#' | '!') => {
                        word.extend(chars.next());
                        in_word = true;
                    }
                    // keepalived keeps other escapes as written.
                    Some(_) => {
                        word.push('\\');
                        word.extend(chars.next());
                        in_word = true;
                    }
                },
                '{' | '}' => {
                    flush(&mut word, &mut in_word, &mut tokens);
                    let token = if c == '{' { Token::Open } else { Token::Close };
                    tokens.push((line, token));
                }
                c if c.is_whitespace() => flush(&mut word, &mut in_word, &mut tokens),
                _ => {
                    word.push(c);
                    in_word = true;
                }
            }
        }
        if in_quote {
            return Err(SyntaxError::new(
                line,
                "unterminated quote: a '\"' without its closing '\"' on the same line",
            ));
        }
        flush(&mut word, &mut in_word, &mut tokens);
        if !continued {
            tokens.push((line, Token::End));
        }
    }
    Ok(tokens)
}

/// One keepalived statement: a keyword, its arguments and its block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Stmt {
    /// Line of the keyword.
    pub(super) line: usize,
    /// The first word.
    pub(super) keyword: String,
    /// The other words.
    pub(super) args: Vec<String>,
    /// The `{ ... }` after it, if any.
    pub(super) block: Option<Vec<Stmt>>,
}

impl Stmt {
    /// The statements of its block (none without a block).
    pub(super) fn children(&self) -> &[Stmt] {
        self.block.as_deref().unwrap_or_default()
    }

    /// Its first argument, if any.
    pub(super) fn arg(&self) -> Option<&str> {
        self.args.first().map(String::as_str)
    }
}

/// Builds the statement tree from the tokens.
pub(super) fn parse(tokens: Vec<(usize, Token)>) -> Result<Vec<Stmt>, SyntaxError> {
    /// An open block: the statement that owns it and what is in it so far.
    struct Frame {
        owner: Option<Stmt>,
        stmts: Vec<Stmt>,
    }
    let mut stack = vec![Frame {
        owner: None,
        stmts: Vec::new(),
    }];
    let mut current: Option<Stmt> = None;
    for (line, token) in tokens {
        let top = stack.len() - 1;
        match token {
            Token::Word(word) => match &mut current {
                Some(stmt) => stmt.args.push(word),
                None => {
                    current = Some(Stmt {
                        line,
                        keyword: word,
                        args: Vec::new(),
                        block: None,
                    });
                }
            },
            Token::End => stack[top].stmts.extend(current.take()),
            Token::Open => {
                // `keyword {`, or `keyword` with the `{` on the next line.
                let owner = match current.take() {
                    Some(stmt) => stmt,
                    None => match stack[top].stmts.pop() {
                        Some(stmt) if stmt.block.is_none() => stmt,
                        _ => return Err(SyntaxError::new(line, "'{' without a keyword before it")),
                    },
                };
                stack.push(Frame {
                    owner: Some(owner),
                    stmts: Vec::new(),
                });
            }
            Token::Close => {
                stack[top].stmts.extend(current.take());
                let Some(Frame {
                    owner: Some(mut owner),
                    stmts,
                }) = stack.pop().filter(|_| top > 0)
                else {
                    return Err(SyntaxError::new(line, "'}' without a matching '{'"));
                };
                owner.block = Some(stmts);
                stack[top - 1].stmts.push(owner);
            }
        }
    }
    let top = stack.len() - 1;
    stack[top].stmts.extend(current.take());
    if let Some(owner) = stack.last().and_then(|frame| frame.owner.as_ref()) {
        return Err(SyntaxError::new(
            owner.line,
            format!(
                "the block of `{}` is never closed: a '}}' is missing",
                owner.keyword
            ),
        ));
    }
    Ok(stack.pop().map(|frame| frame.stmts).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: usize, words: &[&str]) -> Vec<(usize, Token)> {
        words
            .iter()
            .map(|w| match *w {
                "{" => (line, Token::Open),
                "}" => (line, Token::Close),
                w => (line, Token::Word(w.to_owned())),
            })
            .chain([(line, Token::End)])
            .collect()
    }

    #[test]
    fn tokenizer_comments_quotes_braces_and_lines() {
        let tokens = tokenize(
            "# comment\nkw a \"b c\" ! more\nx{y}\n  \\#lit \"q # not\" ''\nlast \\\n  cont\n",
        )
        .unwrap();
        let mut expected = vec![(1, Token::End)];
        expected.extend(words(2, &["kw", "a", "b c"]));
        expected.extend(words(3, &["x", "{", "y", "}"]));
        expected.extend(words(4, &["#lit", "q # not", "''"]));
        expected.extend([
            (5, Token::Word("last".into())),
            (6, Token::Word("cont".into())),
            (6, Token::End),
        ]);
        assert_eq!(tokens, expected);
    }

    #[test]
    fn tokenizer_escapes_in_quotes_and_empty_strings() {
        let tokens = tokenize(r#"p "a \"b\" \\ c" """#).unwrap();
        assert_eq!(
            tokens,
            words(1, &["p", r#"a "b" \ c"#, ""]),
            "quoted escapes and the empty string"
        );
    }

    #[test]
    fn tokenizer_rejects_an_unterminated_quote() {
        assert_eq!(
            tokenize("a\nb \"open\n").unwrap_err().line,
            2,
            "the line of the quote"
        );
    }

    #[test]
    fn parser_builds_nested_blocks_with_lines() {
        let text = "a 1 {\n  b 2\n  c\n  {\n    d\n  }\n} e\nf { g } h\n";
        let stmts = parse(tokenize(text).unwrap()).unwrap();
        assert_eq!(stmts.len(), 4, "{stmts:#?}");
        assert_eq!((stmts[0].keyword.as_str(), stmts[0].line), ("a", 1));
        assert_eq!(stmts[0].args, ["1"]);
        let a = stmts[0].children();
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].keyword.as_str(), a[0].line), ("b", 2));
        assert_eq!((a[1].keyword.as_str(), a[1].line), ("c", 3));
        assert_eq!(a[1].children()[0].keyword, "d");
        assert_eq!(a[1].children()[0].line, 5);
        assert_eq!((stmts[1].keyword.as_str(), stmts[1].line), ("e", 7));
        assert_eq!(stmts[2].children()[0].keyword, "g");
        assert_eq!((stmts[3].keyword.as_str(), stmts[3].line), ("h", 8));
    }

    #[test]
    fn parser_reports_unbalanced_braces_with_lines() {
        let e = parse(tokenize("a {\n}\n}\n").unwrap()).unwrap_err();
        assert_eq!(e, SyntaxError::new(3, "'}' without a matching '{'"));
        let e = parse(tokenize("x\na {\n  b {\n}\n").unwrap()).unwrap_err();
        assert_eq!(e.line, 2, "{e:?}");
        assert!(e.message.contains("`a` is never closed"), "{e:?}");
        let e = parse(tokenize("a { }\n{\n").unwrap()).unwrap_err();
        assert_eq!(e, SyntaxError::new(2, "'{' without a keyword before it"));
    }
}
