# frozen_string_literal: true

module BigRedButton
  VERSION = "0.1.0"
end
